"""Step benchmark: the train step of a config's model (random weights) on synthetic pre-training-shaped rows.

Rows follow `bench/shapes.py pretraining_rows` (4096 tokens, ~25 images x 144 tokens, web-caption lengths,
per-document masking). Warm-up steps (compilation) are excluded. The result holds step time, tokens/s, images/s,
peak device memory, and MFU against the datasheet bf16 peak and against a measured bf16 matmul ceiling, with the FLOP
formula of training metrics (training/flops.py). The command is `python -m oq2vl_jax.bench step` (bench/__main__.py).
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from oq2vl_jax import parallel
from oq2vl_jax.bench.shapes import pretraining_rows
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig, llm_preset, vision_preset
from oq2vl_jax.training import flops
from oq2vl_jax.training.optimizer import lr_schedule
from oq2vl_jax.training.setup import model_options, optimizer_and_state, preset_model_config
from oq2vl_jax.training.state import ModelParts, check_stage, init_state
from oq2vl_jax.training.step import flop_counts, make_train_step


def matmul_ceiling(n: int, reps: int = 10) -> float | None:
    """Measured bf16 FLOP/s of one n x n x n matmul on one device."""
    if n <= 0:
        return None
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a)
    out.block_until_ready()
    return 2.0 * n ** 3 * reps / (time.perf_counter() - t0)


def bench_config(cfg, tiny: bool, images_per_row: int = 25, slots: int = 32) -> tuple[VLMConfig, dict]:
    if tiny:
        config = VLMConfig(vision=vision_preset("siglip-tiny"),
                           llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=1024), tokens_per_image=4)
        return config, dict(row_length=256, images_per_row=8, slots=10)
    return preset_model_config(cfg), dict(row_length=int(cfg.data.row_length), images_per_row=images_per_row,
                                          slots=slots)


def run_step_bench(cfg, *, rows: int, steps: int, warmup: int, tiny: bool, matmul_size: int,
                   images_per_row: int = 25, slots: int = 32, devices=None) -> dict:
    config, shape = bench_config(cfg, tiny, images_per_row, slots)
    options = model_options(cfg.model)
    if tiny:
        options = dataclasses.replace(options, compute_dtype="float32", attention="xla", loss_chunk=128)
    stage = cfg.train.stage
    devices = list(devices or jax.devices())
    mesh = parallel.build_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices)
    if rows % parallel.batch_shards(mesh):
        raise UserError(f"--rows={rows} must be a multiple of the {parallel.batch_shards(mesh)} devices")
    parts = ModelParts(config, options)
    tx, _, shardings = optimizer_and_state(cfg, parts, mesh)
    state = init_state(parts.random_params(0, mesh), parts, stage, cfg.model.frozen_dtype, tx, mesh)
    step = make_train_step(parts, tx, mesh, micro_batches=1, state_shardings=shardings,
                           lr_fn=lr_schedule(float(cfg.optim.lr), int(cfg.train.num_steps),
                                             float(cfg.optim.warmup_ratio)))
    host = pretraining_rows(rows, config=config, seed=0, **shape)
    batch = parallel.host_to_global(host, mesh, rows)
    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    counts = {k: float(v) for k, v in flop_counts(host, options.reference_compat).items()}
    model_flops = flops.step_flops(config, check_stage(stage), counts)
    kind = devices[0].device_kind
    peak = flops.peak_flops_per_device(kind, float(cfg.hardware.peak_tflops))
    ceiling = matmul_ceiling(0 if tiny else matmul_size)
    stats = devices[0].memory_stats() or {}
    return {
        "impl": "oq2vl_jax", "device": kind, "devices": len(devices), "jax": jax.__version__, "rows": rows,
        "stage": stage, "remat": options.remat, "attention": options.attention, "compute_dtype": options.compute_dtype,
        "step_ms": 1e3 * step_s, "step_ms_all": [round(1e3 * t, 2) for t in times],
        "tokens_per_s": counts["real_tokens"] / step_s, "images_per_s": counts["num_images"] / step_s,
        "tflops_per_device": model_flops / step_s / len(devices) / 1e12,
        "mfu": flops.mfu(model_flops, step_s, len(devices), peak),
        "matmul_ceiling_tflops": ceiling / 1e12 if ceiling else None,
        "mfu_vs_ceiling": model_flops / step_s / len(devices) / ceiling if ceiling else None,
        "peak_mem_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
        "loss": float(metrics["loss"]), "real_tokens": counts["real_tokens"], "images": counts["num_images"],
    }
