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
import os
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
            "top": step.hlo.top_collectives(5), "unknown_trip_counts": step.hlo.unknown_trip_counts,
            "hbm_bytes": step.hlo.hbm_bytes}


# ----------------------------------------------------------------------------------------------------------------
# The report `python -m oq2vl_jax.train --dry_run --dry_run_compile` prints

PAPER_TOKENS = 5e9  # the paper's pre-training: ~5B packed tokens, one epoch
GB = 1e9
GIB = 1024.0 ** 3


def _out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "exceeds available" in text or "Out of memory" in text


def _not_fit_line(config, target_name: str, detail: str) -> str:
    t = config.train
    rows = t.global_batch_rows // t.micro_batches
    return (f"DOES NOT FIT on {target_name}: {detail}; raise --config.train.micro_batches (now {t.micro_batches}: "
            f"{rows} rows per micro-batch) or use more devices (hardware.target / hardware.num_slices)")


def projection(s: dict, config, hw) -> dict:
    """Roofline per update from the compiled numbers: compute at the datasheet peak, memory traffic at the HBM
    bandwidth, collectives at the interconnect bandwidth; the floor assumes they overlap perfectly."""
    compute = s["hlo_flops"] / hw.peak_flops
    memory = s["hbm_bytes"] / hw.hbm_bytes_per_s
    links = s["collective_bytes"] / hw.link_bytes_per_s
    floor = max(compute, memory, links)
    tokens = int(config.train.global_batch_rows) * int(config.data.row_length)
    tokens_per_s = tokens / floor
    return {"compute_s": compute, "memory_s": memory, "links_s": links, "floor_s": floor, "serial_s":
            compute + memory + links, "tokens_per_s": tokens_per_s,
            "mfu_ceiling": s["formula_flops"] / (floor * hw.peak_flops),
            "paper_hours": PAPER_TOKENS / tokens_per_s / 3600.0,
            "paper_device_hours": PAPER_TOKENS / tokens_per_s / 3600.0 * s["devices"]}


def report(config, target, step: CompiledStep, compile_s: float) -> list[str]:
    hw = target.hardware
    s = summary(step, config)
    mem = s["memory"]
    capacity = float(config.hardware.get("device_memory_gib", 0.0)) or hw.hbm_gib
    t = config.train
    lines = [f"plan: {target.name} x{target.num_slices} slice(s): {s['devices']} devices ({hw.device_kind}), mesh "
             f"{dict(step.mesh.shape)}, stage {t.stage}, attention {step.parts.options.attention}, remat "
             f"{config.model.remat}; compiled in {compile_s:.0f} s",
             f"batch: {t.global_batch_rows} rows x {config.data.row_length} tokens per update, {t.micro_batches} "
             f"micro-batches, {step.slots} image slots per row, {step.parts.config.tokens_per_image} tokens per image",
             "per device and update (compiled program):"]
    total = mem.get("total", 0.0) / GIB
    fits = not capacity or total <= capacity
    lines.append(f"  memory       {total:8.2f} GiB of {capacity:.1f} (arguments {mem.get('arguments', 0) / GIB:.2f}, "
                 f"temporaries {mem.get('temporaries', 0) / GIB:.2f}, outputs not aliased "
                 f"{(mem.get('outputs', 0) - mem.get('aliased', 0)) / GIB:.2f})")
    if not fits:
        lines.append("  " + _not_fit_line(config, target.name, f"{total:.1f} GiB per device > {capacity:.1f} GiB"))
    lines.append(f"  FLOPs        {s['hlo_flops'] / 1e12:8.2f} TFLOP (matmuls, loop trip counts) vs formula "
                 f"{s['formula_flops'] / 1e12:.2f} (training/flops.py, every slot an image): "
                 f"{s['hlo_flops'] / s['formula_flops']:.2f}x")
    ratio = s["collective_bytes"] / s["bound_bytes"] if s["bound_bytes"] else float("inf")
    lines.append(f"  collectives  {s['collective_bytes'] / GB:8.2f} GB vs FSDP lower bound {s['bound_bytes'] / GB:.2f} "
                 f"GB: {ratio:.2f}x the FSDP bound")
    for kind, moved in s["collectives"].items():
        if moved or s["bound"][kind]:
            lines.append(f"    {kind:18s} {moved / GB:8.2f} GB (bound {s['bound'][kind] / GB:.2f})")
    lines.append("  top contributors:")
    for kind, shape, count, moved in s["top"]:
        lines.append(f"    {kind:18s} {str(shape):24s} x{count:<6.0f} {moved / GB:8.2f} GB")
    if s["unknown_trip_counts"]:
        lines.append(f"  note: {s['unknown_trip_counts']} loops without a known trip count were counted once")
    if hw.peak_flops:
        p = projection(s, config, hw)
        lines += ["projection (roofline from the compiled numbers and datasheet peaks; not a measurement):",
                  f"  compute {p['compute_s']:.2f} s at {hw.peak_flops / 1e12:.0f} TFLOP/s, memory traffic "
                  f"{s['hbm_bytes'] / GB:.0f} GB (estimate) {p['memory_s']:.2f} s at {hw.hbm_bytes_per_s / 1e12:.2f} "
                  f"TB/s, collectives {p['links_s']:.2f} s at {hw.link_bytes_per_s / GB:.0f} GB/s",
                  f"  step floor {p['floor_s']:.2f} s (perfect overlap; {p['serial_s']:.2f} s with none): "
                  f"{p['tokens_per_s']:,.0f} tokens/s ({p['tokens_per_s'] / s['devices']:,.0f} per device), MFU "
                  f"ceiling {100 * p['mfu_ceiling']:.0f}%",
                  f"  {PAPER_TOKENS / 1e9:.0f}B tokens (the paper's pre-training): {p['paper_hours']:.1f} h wall-clock, "
                  f"{p['paper_device_hours']:.0f} device-hours",
                  f"  train.num_steps={t.num_steps} updates: {t.num_steps * p['floor_s'] / 3600:.1f} h wall-clock, "
                  f"{t.num_steps * p['floor_s'] / 3600 * s['devices']:.0f} device-hours"]
    return lines


def plan(config, save_hlo: str = "") -> str:
    """Compile the step for `hardware.target` and report; a step that does not fit is one line. save_hlo: a new
    file for the optimized HLO text (refused if it exists: we never overwrite a file we did not make)."""
    import time

    from oq2vl_jax.errors import UserError
    from oq2vl_jax.training import targets

    name = str(config.hardware.get("target", ""))
    if not name:
        raise UserError("--dry_run_compile needs hardware.target, e.g. --config.hardware.target=v5p-128 (or 8xh100, "
                        "8xa100-40gb, v5e-256, cpu-8)")
    target = targets.parse_target(name, int(config.hardware.get("num_slices", 1)))
    if save_hlo and os.path.exists(save_hlo):
        raise UserError(f"--dry_run_save_hlo {save_hlo}: the file exists; name a new one")
    targets.prepare_process(target)
    devices = targets.target_devices(target)
    start = time.perf_counter()
    try:
        step = compile_step(config, devices, platform=target.platform,
                            compiler_options=targets.compiler_options(target))
    except Exception as e:  # the compiler refuses a step that does not fit, with a long message
        if _out_of_memory(e):
            detail = next((ln.strip() for ln in str(e).splitlines() if "exceeds" in ln or "RESOURCE" in ln), "")
            return _not_fit_line(config, target.name, detail[:200] or "the compiler ran out of device memory")
        raise
    lines = report(config, target, step, time.perf_counter() - start)
    if save_hlo:
        tmp = f"{save_hlo}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(step.compiled.as_text())
        os.replace(tmp, save_hlo)
        lines.append(f"optimized HLO written to {save_hlo}")
    return "\n".join(lines)
