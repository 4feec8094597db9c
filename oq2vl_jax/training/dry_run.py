"""`python -m oq2vl_jax.train --dry_run`: the abstract train state and its shardings on a simulated device count (an
AbstractMesh: no devices, no weights, no data), with per-device memory estimates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from oq2vl_jax import parallel
from oq2vl_jax.training import setup
from oq2vl_jax.training.state import ModelParts, split_params


def _bytes_per_device(tree) -> float:
    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(tree)))


def dry_run(config, num_devices: int) -> str:
    """Abstract state + shardings on an AbstractMesh of num_devices; per-device memory estimates as text."""
    # hardware.num_devices 0 (the demo configs: whatever is present) = this machine's device count
    num_devices = num_devices or int(config.hardware.num_devices) or jax.device_count()
    slices = int(config.hardware.get("num_slices", 1))
    ici, dcn = parallel.mesh_shapes(config.mesh, num_devices, slices)
    shape = tuple(a * b for a, b in zip(ici, dcn))
    mesh = jax.sharding.AbstractMesh(shape, parallel.MESH_AXES)
    setup.validate_config(config, mesh, check_paths=False)
    vlm = setup.preset_model_config(config, int(config.model.vocab_size))
    parts = ModelParts(vlm, setup.model_options(config.model))
    stage = config.train.stage
    trainable, frozen = split_params(parts.abstract_params, stage)
    _, abstract, _ = setup.optimizer_and_state(config, parts, mesh)
    gib = 1024.0 ** 3
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    t, m, llm = config.train, config.model, vlm.llm
    rows = t.global_batch_rows // t.micro_batches // parallel.batch_shards(mesh)
    length = int(config.data.row_length)
    act_bytes = jnp.dtype(m.compute_dtype).itemsize
    layer_in = rows * length * llm.hidden_size * act_bytes
    working = rows * length * (4 * llm.hidden_size + 3 * llm.intermediate_size) * act_bytes
    # remat=none keeps every layer's intermediates: about twice this working set per layer in the compiled program
    # (attention and MLP intermediates, their casts); the plain sum read ~2x low against the compiler
    saved = llm.num_layers * layer_in if m.remat != "none" else llm.num_layers * (layer_in + 2 * working)
    logits = 2 * rows * min(int(m.loss_chunk), length) * llm.vocab_size * 4  # one loss chunk: fp32 logits + grad
    slots = int(config.data.max_images_per_row) or max(1, length // (vlm.tokens_per_image + 3))
    batch = t.global_batch_rows // parallel.batch_shards(mesh) * (
        length * 21 + slots * (config.data.image_size ** 2 * 3 + 1))
    lines = [f"dry run: {num_devices} devices, mesh {dict(mesh.shape)} (ici {ici}, dcn {dcn}), stage {stage}",
             f"model: {count(parts.abstract_params) / 1e9:.3f}B parameters, {count(trainable) / 1e9:.3f}B trained "
             f"(fp32 + AdamW), {count(frozen) / 1e9:.3f}B frozen ({m.frozen_dtype})",
             f"per micro-batch and device: {rows} rows of {length} tokens; {t.micro_batches} micro-batches per "
             f"update of {t.global_batch_rows} rows",
             "per-device memory (GiB):",
             f"  trained params   {_bytes_per_device(abstract.trainable) / gib:8.2f}",
             f"  frozen params    {_bytes_per_device(abstract.frozen) / gib:8.2f}",
             f"  optimizer state  {_bytes_per_device(abstract.opt_state) / gib:8.2f}",
             f"  gradients        {_bytes_per_device(abstract.trainable) / gib:8.2f}  (accumulator, fp32)",
             f"  batch            {batch / gib:8.2f}",
             f"  activations      {(saved + working + logits) / gib:8.2f}  (estimate: remat={m.remat}, one layer's "
             "working set, one loss chunk; --dry_run_compile gives the compiled figure)"]
    total = (2 * _bytes_per_device(abstract.trainable) + _bytes_per_device(abstract.frozen)
             + _bytes_per_device(abstract.opt_state) + batch + saved + working + logits)
    capacity = float(config.hardware.get("device_memory_gib", 0.0))
    lines.append(f"  total            {total / gib:8.2f}" + (f"  of {capacity:.0f} GiB" if capacity else ""))
    if capacity and total / gib > 0.9 * capacity:
        lines.append("  WARNING: above 90% of device memory; raise train.micro_batches or the fsdp size")
    return "\n".join(lines)
