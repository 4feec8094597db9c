"""`python -m oq2vl_jax.data.sources`: index WebDataset shards, convert packed JSON, inspect a source.

    python -m oq2vl_jax.data.sources index PATH [PATH ...] [--index-dir D] [--workers N] [--force]
    python -m oq2vl_jax.data.sources convert-packed-json SRC OUT_DIR [--shard-size N]
    python -m oq2vl_jax.data.sources info KIND PATH [--image-root R]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from oq2vl_jax.data.sources.packed_json import convert_packed_json
from oq2vl_jax.data.sources.registry import SOURCE_KINDS, open_source
from oq2vl_jax.data.sources.webdataset import WebDatasetSource, build_index, publish_index
from oq2vl_jax.errors import UserError, report_user_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.data.sources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_index = sub.add_parser("index", help="build the member index of WebDataset shards (one index per PATH)")
    p_index.add_argument("paths", nargs="+", metavar="PATH",
                         help="a shard directory, one .tar, or a quoted glob / brace range ('dir/{00000..00099}.tar')")
    p_index.add_argument("--index-dir", default=None, help="write the index here instead of next to the shards")
    p_index.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    p_index.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")
    p_conv = sub.add_parser("convert-packed-json", help="rewrite reference *_packed.json files as WebDataset tars")
    p_conv.add_argument("src")
    p_conv.add_argument("out_dir")
    p_conv.add_argument("--shard-size", type=int, default=10000)
    p_info = sub.add_parser("info", help="print the number of records of a source and its first record's keys")
    p_info.add_argument("kind", choices=SOURCE_KINDS)
    p_info.add_argument("path")
    p_info.add_argument("--image-root", default="")
    args = parser.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.INFO)
    try:
        if args.command == "index":
            for path in args.paths:
                index = build_index(path, args.index_dir, workers=args.workers, force=args.force)
                source = WebDatasetSource(path, index_dir=os.path.dirname(index))
                beside = publish_index(index, source.root)  # bucket shards: every host copies it from there
                where = f"{index} (and {beside})" if beside else index
                print(f"{path}: {len(source)} records, index {where}, problems: {source.problems or 'none'}")
        elif args.command == "convert-packed-json":
            print(json.dumps(convert_packed_json(args.src, args.out_dir, args.shard_size)))
        else:
            source = open_source({"kind": args.kind, "path": args.path, "image_root": args.image_root})
            first = source[0] if len(source) else {}
            print(f"{source.name}: {len(source)} records; first record: "
                  f"{ {k: (type(v).__name__ if isinstance(v, (bytes, list)) else v) for k, v in first.items()} }")
    except UserError as e:
        return report_user_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
