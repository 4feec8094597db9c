"""`python -m oq2vl_jax.curate`: score, select and reshard WebDataset image-text data (docs/curation.md).

  score   --model PATH --shards PATTERN --out DIR [--tokenizer DIR] [--batch-size N] [--dtype float32|bfloat16]
          SigLIP scores, one `{shard}_siglip.parquet` per shard (key, uid, image_offset, width, height, status, score)
  keys    --shards PATTERN --out DIR       the same tables without a score (for rules that need none of ours)
  select  --shards PATTERN --tables DIR --rule JSON|FILE --out SEL.npz [--task siglip|keys]
          a selection file; train on it with {"kind": "webdataset", "path": ..., "select": "SEL.npz"}
  reshard --selection SEL.npz --out DIR [--shard-size 10000]     copy the selected samples into new shards
  mlm     --ckpt PATH --shards PATTERN --out DIR [--tasks a,b] [--batch-size N]
          MLM-Filter scores from a model our inference API loads: {8 digits}_{task}.parquet per shard

A user mistake prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from oq2vl_jax.errors import UserError, report_user_error



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.curate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="SigLIP image-text scores per shard (parquet)")
    score.add_argument("--model", required=True, help="HF SiglipModel directory, big_vision .npz, or open_clip "
                                                      "file / directory")
    score.add_argument("--shards", required=True, help="directory of .tar shards, one .tar, or a glob")
    score.add_argument("--out", required=True, help="directory for the per-shard parquet tables")
    score.add_argument("--tokenizer", help="text tokenizer directory (default: the model's directory)")
    score.add_argument("--batch-size", type=int, default=256, help="pairs per step (a multiple of the devices)")
    score.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    score.add_argument("--task", default="siglip", help="table name suffix: {shard}_{task}.parquet")
    score.add_argument("--vision-heads", type=int, help="vision heads of an open_clip trunk of unusual width")
    score.add_argument("--workers", type=int, default=8, help="image decode threads")
    keys = sub.add_parser("keys", help="per-shard row tables without a score")
    keys.add_argument("--shards", required=True)
    keys.add_argument("--out", required=True)
    sel = sub.add_parser("select", help="evaluate a rule over the tables and write a selection file")
    sel.add_argument("--shards", required=True)
    sel.add_argument("--tables", required=True, help="directory of the per-shard tables")
    sel.add_argument("--rule", required=True, help="rule as JSON text or a .json file (see docs/curation.md)")
    sel.add_argument("--out", required=True, help="selection file to write (.npz)")
    sel.add_argument("--task", default="keys", help="which tables list the rows: keys (default) or a score task")
    res = sub.add_parser("reshard", help="copy the selected samples into new {:08d}.tar shards")
    res.add_argument("--selection", required=True)
    res.add_argument("--out", required=True)
    res.add_argument("--shard-size", type=int, default=10000)
    mlm = sub.add_parser("mlm", help="MLM-Filter scores through the inference API (original table layout)")
    mlm.add_argument("--ckpt", required=True, help="oq2vl_jax checkpoint, training workdir or hf-llava directory")
    mlm.add_argument("--shards", required=True, help="{8 digits}.tar shards: directory, glob or brace range")
    mlm.add_argument("--out", required=True, help="directory for {8 digits}_{task}.parquet")
    mlm.add_argument("--tasks", default="image_text_matching,object_detail_fulfillment,caption_text_quality,"
                                        "semantic_understanding", help="comma-separated metrics")
    mlm.add_argument("--batch-size", type=int, default=64)
    return parser


def _rule(text: str) -> dict:
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"--rule is neither a JSON file nor JSON text: {e}") from None


def run(args: argparse.Namespace) -> dict:
    if args.command == "score":
        from oq2vl_jax.curate import siglip_score
        return siglip_score.score_shards(args.model, args.shards, args.out, task=args.task,
                                         tokenizer_dir=args.tokenizer, batch_size=args.batch_size,
                                         compute_dtype=args.dtype, vision_heads=args.vision_heads,
                                         workers=args.workers)
    if args.command == "keys":
        from oq2vl_jax.curate import shards
        return {"written": shards.write_key_tables(args.shards, args.out)}
    if args.command == "select":
        from oq2vl_jax.curate import select
        return select.select(args.shards, args.tables, _rule(args.rule), args.out, task=args.task)
    if args.command == "mlm":
        from oq2vl_jax.curate import mlm_filter, mlm_score
        tasks = tuple(t for t in args.tasks.split(",") if t)
        unknown = [t for t in tasks if t not in mlm_filter.TASKS]
        if unknown:  # before loading a model
            raise UserError(f"--tasks: unknown MLM-Filter task(s) {unknown}; choose from {list(mlm_filter.TASKS)}")
        from oq2vl_jax.inference import VLMInference
        vlm = VLMInference.load(args.ckpt)
        return mlm_filter.score_shards(mlm_score.inference_generate(vlm, args.batch_size), args.shards, args.out,
                                       tasks)
    from oq2vl_jax.curate import reshard
    return reshard.reshard(args.selection, args.out, args.shard_size)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.INFO)
    try:
        print(json.dumps(run(args)))
    except UserError as e:
        return report_user_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
