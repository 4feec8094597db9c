"""Build a byte-level BPE tokenizer from your own captions, for training a model from scratch (init.source=random).

    python -m oq2vl_jax.data.build_tokenizer /data/shards --out /models/my_tokenizer --vocab-size 32000
    python -m oq2vl_jax.data.build_tokenizer '/data/shards/{00000..00099}.tar' /more/shards --out tok \\
        --max-captions 200000

Each SOURCE is a webdataset path (a directory, one .tar, a glob, a brace range; see data/sources/shard_paths.py) or,
with `--kind packed_json`, the reference's packed JSON files. Up to --max-captions captions, spread evenly over the
sources' records, train a BPE with Qwen2's pre-tokenizer (split regex + byte level) and Qwen2's special tokens
`<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos); `load_tokenizer` adds `<s>` and `<|endofchunk|>` on top,
as for the real Qwen2 tokenizer. The result is an HF tokenizer directory (tokenizer.json + tokenizer_config.json)
for `--config.data.tokenizer_dir`. OUT must be new or empty; it is written atomically. Offline; deterministic for
given captions.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from typing import Sequence

from oq2vl_jax.errors import UserError, report_user_error
from oq2vl_jax.text.bpe import train_bpe_tokenizer


def read_captions(paths: Sequence, kind: str, max_captions: int, log=print) -> list[str]:
    """Up to max_captions caption texts, reading records at an even stride over every source."""
    from oq2vl_jax.data.sources.registry import CAPTION_KINDS, open_source

    if kind not in CAPTION_KINDS:
        raise UserError(f"--kind must be one of {CAPTION_KINDS}, got {kind!r}")
    sources = [open_source({"kind": kind, "path": p}, f"source {p!r}") for p in paths]
    total = sum(len(s) for s in sources)
    stride = max(1, -(-total // max_captions))
    captions, done, start = [], 0, time.time()
    wanted = -(-total // stride)
    for source in sources:
        for i in range(0, len(source), stride):
            for doc in source[i]["documents"]:
                captions += [str(v) for k, v in doc["parts"] if k == "text" and str(v).strip()]
            done += 1
            if done % 10000 == 0:
                rate = done / (time.time() - start)
                log(f"read {done}/{wanted} records ({rate:.0f}/s, ETA {(wanted - done) / rate:.0f} s)")
    if not captions:
        raise UserError(f"no captions found in {list(paths)}")
    return captions[:max_captions]


def build(paths: Sequence, out_dir: str, *, vocab_size: int, kind: str = "webdataset",
          max_captions: int = 1_000_000, log=print) -> str:
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.lexists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise UserError(f"--out {out_dir} exists and is not an empty directory; refusing to write there")
    if vocab_size < 512:
        raise UserError(f"--vocab-size must be >= 512 (256 byte tokens + merges + specials), got {vocab_size}")
    captions = read_captions(paths, kind, max_captions, log)
    log(f"training a BPE of {vocab_size} tokens on {len(captions)} captions")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp", dir=parent)
    try:
        train_bpe_tokenizer(tmp, captions, vocab_size)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory only
        raise
    return out_dir


def main(argv: list[str] | None = None) -> int:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.data.build_tokenizer", description=doc[0],
                                     epilog="examples:\n" + doc[1] + "\n\n" + "\n\n".join(doc[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="shard directory, .tar, glob or brace pattern")
    parser.add_argument("--out", required=True, help="new or empty output directory")
    parser.add_argument("--vocab-size", type=int, default=32000, help="BPE vocabulary size (default 32000)")
    parser.add_argument("--kind", default="webdataset", help="source kind: webdataset (default) or packed_json")
    parser.add_argument("--max-captions", type=int, default=1_000_000, help="captions to train on (default 1M)")
    args = parser.parse_args(argv)
    try:
        out = build(args.sources, args.out, vocab_size=args.vocab_size, kind=args.kind,
                    max_captions=max(1, args.max_captions))
    except UserError as e:
        return report_user_error(e)
    from oq2vl_jax.text.tokens import load_tokenizer
    print(f"tokenizer written to {out} ({len(load_tokenizer(out))} tokens with <s> and <|endofchunk|>); use "
          f"--config.data.tokenizer_dir={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
