"""Our bicubic resize (oq2vl_jax/data/resample.py) against the installed Pillow: equality and speed.

    python benchmarks/resample_vs_pillow.py [--cases 310]
    PYTHONPATH=/tmp/pillow11 python benchmarks/resample_vs_pillow.py   # another Pillow: pip install --target ...

Counts the random shapes (noise images, 1..900 px in, 1..500 px out, plus edge shapes) on which ours differs from
Pillow's one-shot `resize(size, BICUBIC)` and from its horizontal-then-vertical pair of single-axis resizes. Every
Pillow before 12.2 (the reference's) runs that order in one shot, so both counts should be 0 there; newer Pillows
sometimes run the vertical pass first (docs/data.md). Then times both on ~512 px photo-like images -> 384x384.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import PIL
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_data import make_jpeg  # noqa: E402
from oq2vl_jax.data.resample import bicubic_resize  # noqa: E402

EDGE_SHAPES = [(512, 384, 384, 384), (300, 700, 384, 384), (384, 384, 384, 384), (2, 2, 384, 384), (1, 1, 3, 3),
               (1, 7, 1, 3), (4000, 30, 384, 384), (30, 4000, 384, 384), (977, 1501, 64, 729), (384, 500, 384, 384)]


def count_differences(cases: int) -> dict:
    rng = np.random.default_rng(0)
    shapes = [tuple(int(v) for v in (rng.integers(2, 900), rng.integers(2, 900), rng.integers(1, 500),
                                     rng.integers(1, 500))) for _ in range(cases - len(EDGE_SHAPES))] + EDGE_SHAPES
    one_shot = two_pass = 0
    for in_w, in_h, out_w, out_h in shapes:
        pixels = rng.integers(0, 256, (in_h, in_w, 3), dtype=np.uint8)
        ours = bicubic_resize(pixels, out_w, out_h)
        img = Image.fromarray(pixels)
        one_shot += not np.array_equal(ours, np.asarray(img.resize((out_w, out_h), Image.BICUBIC)))
        pair = img.resize((out_w, in_h), Image.BICUBIC).resize((out_w, out_h), Image.BICUBIC)
        two_pass += not np.array_equal(ours, np.asarray(pair))
    return {"cases": len(shapes), "differ_from_one_shot": one_shot, "differ_from_horizontal_then_vertical": two_pass}


def time_photos(count: int = 100, repeats: int = 5) -> dict:
    rng = np.random.default_rng(1)
    decoded = [Image.open(io.BytesIO(make_jpeg(rng))) for _ in range(count)]
    for img in decoded:
        img.load()
    bicubic_resize(np.asarray(decoded[0]), 384, 384)  # warm-up: load or compile the kernels

    def best_ms(fn) -> float:
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            for img in decoded:
                fn(img)
            best = min(best, (time.process_time() - start) / count * 1e3)
        return round(best, 3)

    return {"pil_resize_ms": best_ms(lambda img: np.asarray(img.resize((384, 384), Image.BICUBIC))),
            "ours_resize_ms": best_ms(lambda img: bicubic_resize(np.asarray(img), 384, 384))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=310)
    args = parser.parse_args()
    print(json.dumps({"pillow": PIL.__version__, **count_differences(args.cases), **time_photos()}, indent=2))


if __name__ == "__main__":
    main()
