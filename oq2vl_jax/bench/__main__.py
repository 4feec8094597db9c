"""`python -m oq2vl_jax.bench step|decode`: the train step of a config's model (random weights) on synthetic
pre-training-shaped rows (bench/step.py), or generation against transformers (bench/decode.py).

  python -m oq2vl_jax.bench step --config configs/h100x8.py [--config.model.remat=dots ...] [--rows 2]
  python -m oq2vl_jax.bench step --config configs/demo.py --tiny     # checks the benchmark itself on CPU
  python -m oq2vl_jax.bench decode [--decode_size small|full] [--batches 1,8,64] [--new_tokens 32]
                                                                     # generation vs transformers (bench/decode.py)

Step rows follow `bench/shapes.py pretraining_rows` (4096 tokens, ~25 images x 144 tokens, web-caption lengths,
per-document masking). Warm-up steps (compilation) are excluded. Prints step time, tokens/s, images/s, peak device
memory, and MFU against the datasheet bf16 peak and against a measured bf16 matmul ceiling, with the FLOP formula of
training metrics (training/flops.py), then one JSON line.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from oq2vl_jax.bench import decode as bench_decode, step
from oq2vl_jax.errors import UserError, report_user_error


def define_flags() -> dict:
    """Flags exist only when the benchmark is the program (the trainer defines its own --config)."""
    return {
        "config": config_flags.DEFINE_config_file("config", "configs/h100x8.py", "training config to benchmark"),
        "rows": flags.DEFINE_integer("rows", 2, "rows per step (all devices)"),
        "steps": flags.DEFINE_integer("steps", 5, "timed steps"),
        "warmup": flags.DEFINE_integer("warmup", 2, "untimed steps first (compilation included)"),
        "images_per_row": flags.DEFINE_integer("images_per_row", 25, "images per row (documents per row)"),
        "slots": flags.DEFINE_integer("slots", 32, "image slots per row (M); the unused ones are padding"),
        "matmul_size": flags.DEFINE_integer("matmul_size", 8192, "n for the n^3 bf16 matmul ceiling (0 = skip)"),
        "tiny": flags.DEFINE_bool("tiny", False, "tiny model and 256-token rows: checks the benchmark on CPU"),
        "json": flags.DEFINE_string("json", "", "also write the result here"),
        "decode_size": flags.DEFINE_enum("decode_size", "small", ["small", "full"], "decode: model size"),
        "batches": flags.DEFINE_list("batches", ["1", "8", "64"], "decode: batch sizes"),
        "new_tokens": flags.DEFINE_integer("new_tokens", 32, "decode: new tokens per row"),
        "cpu_threads": flags.DEFINE_integer("cpu_threads", 1, "decode on CPU: cores (and torch threads) for both "
                                            "sides; 0 = each library's default"),
        "repeats": flags.DEFINE_integer("repeats", 5, "decode: timed rounds per batch, the two sides alternating "
                                        "(reported as min / median / max)"),
    }


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_json(path: str, result: dict) -> None:
    """Atomically (the GPU job may stop this process between two batch sizes and keep what was written)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(result, out)
    os.replace(tmp, path)


def main_decode(f: dict):
    try:
        batches = tuple(int(b) for b in f["batches"].value)
    except ValueError:
        sys.exit(report_user_error(UserError(f"--batches must be integers, got {f['batches'].value}")))
    on_row = (lambda result: _write_json(f["json"].value, result)) if f["json"].value else None
    try:
        result = bench_decode.run_decode_bench(f["decode_size"].value, batches, f["new_tokens"].value,
                                               f["repeats"].value, on_row=on_row, threads=f["cpu_threads"].value)
    except UserError as e:
        sys.exit(report_user_error(e))
    print(bench_decode.format_table(result))
    print(json.dumps(result))


def main(argv, f: dict):
    if len(argv) == 2 and argv[1] == "decode":
        return main_decode(f)
    if len(argv) != 2 or argv[1] != "step":
        raise app.UsageError("usage: python -m oq2vl_jax.bench step --config CONFIG [--rows N] [--tiny] | "
                             "decode [--decode_size small|full]")
    try:
        result = step.run_step_bench(f["config"].value, rows=f["rows"].value, steps=f["steps"].value,
                                warmup=f["warmup"].value, tiny=f["tiny"].value, matmul_size=f["matmul_size"].value,
                                images_per_row=f["images_per_row"].value, slots=f["slots"].value)
    except UserError as e:
        sys.exit(report_user_error(e))
    for key in ("device", "rows", "remat", "attention", "step_ms", "tokens_per_s", "images_per_s", "tflops_per_device",
                "mfu", "matmul_ceiling_tflops", "mfu_vs_ceiling", "peak_mem_gib", "loss"):
        print(f"{key:>22}: {_fmt(result[key])}")
    print(json.dumps(result))
    if f["json"].value:
        _write_json(f["json"].value, result)


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
