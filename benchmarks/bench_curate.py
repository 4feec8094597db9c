"""Curation benchmark (a script, not a test).

    python benchmarks/bench_curate.py [--images 256] [--rows 1000000] [--json out.json]     CPU: tiny tower + selection
    python benchmarks/bench_curate.py --so400m [--batch 256] [--json out.json]               GPU: So400m pair, bf16

1. Scorer, tiny tower (CPU): synthetic ~512 px JPEG shards scored end to end by curate/siglip_score.py's Scorer
   (tar read + decode + bicubic resize + tokenize + jitted pair score on a data mesh of all devices), reported as
   images per CPU-second (process CPU time: "per core" whatever the thread count), with the device step alone.
2. Scorer, So400m/14@384 pair (GPU form, random weights, bf16): the jitted step alone (images/s) at --batch, plus
   host decode + resize per CPU-second, so the number of host cores one accelerator needs can be read off.
3. Selection: --rows synthetic samples in 100 shards (score + key tables written, dummy .tar files for the
   fingerprints), rule {"and": [top 30% of a float score with the seeded tie rule, basic filter]}, wall time of
   `curate select` (read tables, evaluate, write the selection); then that rule united with a DataComp-style uid
   list of 10% of the rows (parses every row's 128-bit uid).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from oq2vl_jax.curate import select, shards as shards_lib  # noqa: E402
from oq2vl_jax.curate.siglip_score import Scorer, TextTokenizer  # noqa: E402
from oq2vl_jax.data import images as images_lib  # noqa: E402
from oq2vl_jax.data.sources.selection import shard_fingerprint  # noqa: E402
from oq2vl_jax.data.sources.webdataset import write_tar_shard  # noqa: E402
from oq2vl_jax.demo import shapes as demo  # noqa: E402
from oq2vl_jax.models.presets import PAIR_PRESETS, SiglipTextConfig  # noqa: E402


def jpeg(rng: np.random.Generator, side: int = 512) -> bytes:
    small = rng.integers(0, 256, (side // 16, side // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side * 3 // 4), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_tiny_scorer(n: int, tmp: str) -> dict:
    import dataclasses
    rng = np.random.default_rng(0)
    root = os.path.join(tmp, "shards")
    per = 128
    for s in range(0, n, per):
        write_tar_shard(os.path.join(root, f"{s // per:08d}.tar"), [
            {"__key__": f"{i:09d}", "jpg": jpeg(rng), "txt": " ".join(rng.choice(["a", "red", "dog", "on", "the",
                                                                                  "street"], 12)),
             "json": {"uid": f"{i:032x}"}} for i in range(s, min(n, s + per))])
    tok_dir = demo.build_tiny_tokenizer(os.path.join(tmp, "tok"))
    cfg = PAIR_PRESETS["siglip-tiny-pair"]
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=1024))
    scorer = Scorer(cfg, None, TextTokenizer(tok_dir, cfg.text.max_length), batch_size=64)
    import concurrent.futures
    out = {}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        _, shards = shards_lib.list_shards(root)
        scorer.score_shard(os.path.join(root, shards[0]), pool)  # compile
        wall, cpu = time.perf_counter(), time.process_time()
        total = 0
        for shard in shards:
            samples, scores = scorer.score_shard(os.path.join(root, shard), pool)
            total += len(samples)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    pixels = np.zeros((64, cfg.vision.image_size, cfg.vision.image_size, 3), np.uint8)
    ids = np.zeros((64, cfg.text.max_length), np.int32)
    scorer.score_batch(pixels, ids)
    t, reps = time.perf_counter(), 20
    for _ in range(reps):
        scorer.score_batch(pixels, ids)
    step = (time.perf_counter() - t) / reps
    out.update({"tiny_images": total, "tiny_wall_s": round(wall, 3), "tiny_cpu_s": round(cpu, 3),
                "tiny_images_per_cpu_s": round(total / cpu, 1), "tiny_images_per_wall_s": round(total / wall, 1),
                "tiny_step_images_per_s": round(64 / step, 1), "cpu_count": os.cpu_count()})
    return out


def bench_so400m(batch: int) -> dict:
    import jax
    cfg = PAIR_PRESETS["siglip-so400m-384-pair"]

    class NoTokenizer:  # the step alone; tokenization is timed by the tiny run
        def __call__(self, texts):
            raise NotImplementedError

    scorer = Scorer(cfg, None, NoTokenizer(), batch_size=batch, compute_dtype="bfloat16")
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 384, 384, 3), dtype=np.uint8)
    ids = np.random.default_rng(1).integers(0, cfg.text.vocab_size, (batch, cfg.text.max_length)).astype(np.int32)
    t = time.perf_counter()
    scorer.score_batch(pixels, ids)
    compile_s = time.perf_counter() - t
    reps = 10
    t = time.perf_counter()
    for _ in range(reps):
        scorer.score_batch(pixels, ids)
    step = (time.perf_counter() - t) / reps
    rng = np.random.default_rng(2)
    data = [jpeg(rng) for _ in range(64)]
    cpu = time.process_time()
    for d in data:
        images_lib.decode_image(d, 384)
    decode = 64 / (time.process_time() - cpu)
    return {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(), "batch": batch,
            "compile_s": round(compile_s, 1), "step_s": round(step, 4), "so400m_images_per_s": round(batch / step, 1),
            "decode_resize_384_images_per_cpu_s": round(decode, 1),
            "host_cores_per_device": round(batch / step / decode / jax.device_count(), 1)}


def bench_select(rows: int, tmp: str) -> dict:
    rng = np.random.default_rng(0)
    root, tables = os.path.join(tmp, "sel_shards"), os.path.join(tmp, "tables")
    os.makedirs(root, exist_ok=True)
    n_shards = 100
    per = rows // n_shards
    for s in range(n_shards):
        name = f"{s:08d}.tar"
        with open(os.path.join(root, name), "wb") as f:
            f.write(b"\0" * 1024)
        fp = shard_fingerprint(root, name)
        ids = np.arange(s * per, (s + 1) * per)
        cols = {"key": [f"{i:09d}" for i in ids], "uid": [f"{i:032x}" for i in ids],
                "image_offset": (np.arange(per) * 4096 + 512).astype(np.int64),
                "width": rng.integers(5, 1000, per), "height": rng.integers(5, 1000, per),
                "status": ["success"] * per}
        shards_lib.write_table(shards_lib.table_path(tables, name, "keys"), cols, fp)
        shards_lib.write_table(shards_lib.table_path(tables, name, "clip"),
                               dict(cols, score=rng.normal(size=per).astype(np.float32)), fp)
    rule = {"and": [{"table": "clip", "top_fraction": 0.3}, {"basic": {"min_side": 10, "max_aspect": 4}}]}
    t = time.perf_counter()
    counts = select.select(root, tables, rule, os.path.join(tmp, "sel.npz"))
    wall = time.perf_counter() - t
    subset = np.sort(np.array([divmod(int(i), 2 ** 64) for i in rng.choice(rows, rows // 10, replace=False)],
                              "u8,u8"))
    np.save(os.path.join(tmp, "subset.npy"), subset)
    t = time.perf_counter()
    union = select.select(root, tables, {"union": [rule, {"uids": os.path.join(tmp, "subset.npy")}]},
                          os.path.join(tmp, "sel2.npz"))
    wall_union = time.perf_counter() - t
    return {"select_rows": rows, "select_selected": counts["selected"], "select_wall_s": round(wall, 2),
            "selection_file_bytes": os.path.getsize(os.path.join(tmp, "sel.npz")),
            "select_union_uids_selected": union["selected"], "select_union_uids_wall_s": round(wall_union, 2)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--so400m", action="store_true")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = bench_so400m(args.batch) if args.so400m else {**bench_tiny_scorer(args.images, tmp),
                                                               **bench_select(args.rows, tmp)}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
