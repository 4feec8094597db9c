"""Compile the real train step for a set of devices (this machine's, simulated CPU devices, or a TPU / GPU target
described by `training/targets.py`) and read what the compiled program costs per device: memory, matmul FLOPs with
loop trip counts against the model formula (training/flops.py), bytes per collective kind against the FSDP lower
bound, and a roofline projection.

FSDP lower bound (bytes one device moves per update, ring accounting as in `hlo_stats`), for every micro-batch:
  forward      every parameter sharded over the batch mesh axes is all-gathered once, in the compute dtype;
  backward     the ones on the gradient path (trained towers; the LLM also when only the projector trains) are
               gathered again (the layers are rematerialised, so the forward copy is gone);
  gradients    each trained parameter's gradient is reduce-scattered over the axes it is sharded on and all-reduced
               over the batch axes it is not sharded on (replicated small parameters: all-reduced), compute dtype.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from oq2vl_jax import parallel
from oq2vl_jax.batch import LOSS_FIELDS, MODEL_FIELDS
from oq2vl_jax.training import flops as flops_lib
from oq2vl_jax.training import hlo_stats, setup
from oq2vl_jax.training.optimizer import lr_schedule
from oq2vl_jax.training.state import STAGES, ModelParts
from oq2vl_jax.training.step import make_train_step


@dataclasses.dataclass
class CompiledStep:
    mesh: jax.sharding.Mesh
    parts: ModelParts
    abstract: object           # TrainState of ShapeDtypeStructs with shardings
    compiled: object
    hlo: hlo_stats.HloStats
    memory: dict
    slots: int                 # image slots per row the batch shape has


def image_slots(config, tokens_per_image: int) -> int:
    """Image slots per row: data.max_images_per_row, or as many images as fit a row (each with >= 3 text tokens)."""
    return int(config.data.max_images_per_row) or max(1, int(config.data.row_length) // (tokens_per_image + 3))


def batch_structs(config, mesh, slots: int) -> dict:
    rows, length, size = int(config.train.global_batch_rows), int(config.data.row_length), int(config.data.image_size)
    shapes = {"images": (rows, slots, size, size, 3), "image_valid": (rows, slots)}
    out = {}
    for name, (dtype, rank) in {**MODEL_FIELDS, **LOSS_FIELDS}.items():
        shape = shapes.get(name, (rows, length))
        out[name] = jax.ShapeDtypeStruct(shape, dtype, sharding=parallel.batch_sharding(mesh, rank))
    return out


def compile_step(config, devices: Sequence, *, platform: str | None = None, compiler_options=None) -> CompiledStep:
    """Lowers and compiles the train step of `config` for `devices` (nothing is allocated or run)."""
    mesh = parallel.build_mesh(config.mesh, devices)
    setup.validate_config(config, mesh, check_paths=False)
    vlm = setup.preset_model_config(config, int(config.model.vocab_size))
    options = setup.model_options(config.model, platform or devices[0].platform)
    parts = ModelParts(vlm, options)
    tx, abstract, shardings = setup.optimizer_and_state(config, parts, mesh)
    o = config.optim
    step = make_train_step(parts, tx, mesh, micro_batches=int(config.train.micro_batches),
                           lr_fn=lr_schedule(float(o.lr), int(config.train.num_steps), float(o.warmup_ratio)),
                           state_shardings=shardings, compiler_options=compiler_options)
    slots = image_slots(config, vlm.tokens_per_image)
    with jax.set_mesh(mesh):
        compiled = step.lower(abstract, batch_structs(config, mesh, slots)).compile()
    stats = hlo_stats.analyze(compiled.as_text(), len(devices))
    return CompiledStep(mesh, parts, abstract, compiled, stats, hlo_stats.memory_bytes(compiled), slots)


def _axes_of(sharding) -> list[str]:
    axes = []
    for entry in sharding.spec:
        if entry is None:
            continue
        axes.extend(entry if isinstance(entry, tuple) else (entry,))
    return axes


def fsdp_bound(step: CompiledStep, config) -> dict[str, float]:
    """The FSDP lower bound per device per update, by kind (see the module docstring)."""
    mesh, stage = step.mesh, config.train.stage
    compute = jnp.dtype(config.model.compute_dtype).itemsize
    trained = STAGES[stage]
    grad_path = set(trained) | ({"llm"} if "projector" in trained else set())
    batch_axes = [a for a in parallel.BATCH_AXES if mesh.shape[a] > 1]
    out = {k: 0.0 for k in hlo_stats.COLLECTIVE_KINDS}
    micro = int(config.train.micro_batches)
    for group_name, tree in (("trainable", step.abstract.trainable), ("frozen", step.abstract.frozen)):
        for tower, sub in tree.items():
            for leaf in jax.tree.leaves(sub):
                full = math.prod(leaf.shape) * compute
                sharded = [a for a in _axes_of(leaf.sharding) if a in batch_axes]
                n = math.prod(mesh.shape[a] for a in sharded)
                gather = full * (n - 1) / n
                out["all-gather"] += micro * gather * (2 if tower in grad_path else 1)
                if group_name == "trainable":
                    out["reduce-scatter"] += micro * gather
                    rest = math.prod(mesh.shape[a] for a in batch_axes if a not in sharded)
                    out["all-reduce"] += micro * 2 * (full / n) * (rest - 1) / rest
    return out


def formula_flops(step: CompiledStep, config) -> float:
    """training/flops.py's model FLOPs for the compiled batch shape: every row full, every image slot holding an image
    (the most the step can do), one document per image (tokens_per_image + 3 tokens) and the rest of the row text."""
    vlm = step.parts.config
    rows, length = int(config.train.global_batch_rows), int(config.data.row_length)
    images = min(step.slots, length // (vlm.tokens_per_image + 3))
    docs = [vlm.tokens_per_image + 3] * images
    docs.append(length - sum(docs))
    pairs = sum(n * (n + 1) / 2 for n in docs if n > 0)
    if config.model.reference_compat:
        pairs = length * (length + 1) / 2
    counts = {"real_tokens": rows * length, "causal_pairs": rows * pairs, "num_images": rows * images}
    return flops_lib.step_flops(vlm, STAGES[config.train.stage], counts)


def summary(step: CompiledStep, config) -> dict:
    """The numbers the report prints, per device per update."""
    devices = int(np.prod(list(step.mesh.shape.values())))
    bound = fsdp_bound(step, config)
    measured = step.hlo.bytes_by_kind()
    return {"devices": devices, "memory": step.memory, "hlo_flops": step.hlo.flops,
            "formula_flops": formula_flops(step, config) / devices, "collectives": measured,
            "collective_bytes": sum(measured.values()), "bound": bound, "bound_bytes": sum(bound.values()),
            "top": step.hlo.top_collectives(5), "unknown_trip_counts": step.hlo.unknown_trip_counts}
