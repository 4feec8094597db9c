"""Distributed start-up, the device mesh, and the one logical-axis rules table.

Mesh axes are `data`, `fsdp` and `tensor`. Each has an ICI size (inside a TPU slice / GPU node) and a DCN size (across
slices / nodes); the mesh axis size is their product. One ICI size and one DCN size may be -1 (fill with what is left).

Parameters carry one logical name per dimension (`models/layers.py`); `LOGICAL_AXIS_RULES` maps each name to mesh
axes. A dimension whose size is not divisible by its mesh axes keeps the longest prefix of them that divides it (often
none, i.e. replicated) and this is logged once per (name, size). A mesh axis is used at most once per array.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oq2vl_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# One row per logical name. Weights: FSDP over their model dimension, tensor parallel over heads / MLP / vocab.
# Activations: batch over data and fsdp (FSDP is data parallel for activations).
LOGICAL_AXIS_RULES: dict[str, tuple[str, ...]] = {
    "layers": (),
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "q_heads": ("tensor",),
    "kv_heads": ("tensor",),
    "mlp": ("tensor",),
    "norm": (),
    "projector_out": ("tensor",),
    "vision_embed": ("fsdp",),
    "vision_heads": ("tensor",),
    "vision_mlp": ("tensor",),
    "cache_batch": ("data", "fsdp"),  # KV cache (models/cache.py): rows like activations, KV heads like kv_heads
    "cache_length": (),
    "head_dim": (),
    "activation_batch": ("data", "fsdp"),
    "activation_length": (),
    "activation_embed": (),
}
BATCH_AXES = LOGICAL_AXIS_RULES["activation_batch"]

_logged_fallbacks: set = set()


# ----------------------------------------------------------------------------------------------------------------
# Distributed start-up


def _tpu_multihost() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or int(os.environ.get("MEGASCALE_NUM_SLICES", "1")) > 1


def _slurm_multitask() -> bool:
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed(mode: str = "auto") -> bool:
    """Starts multi-process JAX when needed; returns whether it did.

    mode "off": never. "on": always (`jax.distributed.initialize()` auto-detects TPU pods, SLURM, Open MPI...).
    "auto": when the explicit coordinator variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID are
    set (GPU clusters without SLURM, local tests), or inside a multi-task SLURM step, or on a multi-host TPU.
    Explicit variables win over auto-detection in every mode but "off".
    """
    if mode not in ("auto", "on", "off"):
        raise UserError(f"distributed must be auto, on or off, got '{mode}'")
    if mode == "off" or jax.distributed.is_initialized():
        return False
    env = os.environ
    if "JAX_COORDINATOR_ADDRESS" in env:
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
        if missing:
            raise UserError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not; set all three (or none)")
        local = env.get("JAX_LOCAL_DEVICE_IDS")
        jax.distributed.initialize(
            coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
            process_id=int(env["JAX_PROCESS_ID"]),
            local_device_ids=[int(i) for i in local.split(",")] if local else None)
    elif mode == "on" or _slurm_multitask() or _tpu_multihost():
        jax.distributed.initialize()
    else:
        return False
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


# ----------------------------------------------------------------------------------------------------------------
# Mesh


def _fill(sizes: dict[str, int], total: int, what: str) -> tuple[int, ...]:
    unknown = [a for a in MESH_AXES if sizes[a] == -1]
    if len(unknown) > 1 or any(sizes[a] == 0 or sizes[a] < -1 for a in MESH_AXES):
        raise UserError(f"mesh: at most one of {what}.{{data,fsdp,tensor}} may be -1 and none may be 0 or < -1; "
                        f"got {sizes}")
    known = math.prod(sizes[a] for a in MESH_AXES if sizes[a] != -1)
    if total % known:
        raise UserError(f"mesh: {what} sizes {sizes} (product {known}) do not divide the {total} devices available "
                        f"to them; set --config.mesh.{'dcn_' if what == 'dcn' else ''}<axis> so the product divides "
                        f"{total}")
    filled = dict(sizes)
    if unknown:
        filled[unknown[0]] = total // known
    elif known != total:
        raise UserError(f"mesh: {what} sizes {sizes} use {known} of the {total} devices available to them; set one of "
                        f"--config.mesh.{'dcn_' if what == 'dcn' else ''}{{data,fsdp,tensor}} to -1 or make the "
                        f"product {total}")
    return tuple(filled[a] for a in MESH_AXES)


def _granules(devices: Sequence[jax.Device]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def mesh_shapes(mesh_cfg: Mapping, num_devices: int, num_granules: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici shape, dcn shape) over MESH_AXES. mesh_cfg has data/fsdp/tensor and dcn_data/dcn_fsdp/dcn_tensor."""
    dcn = {a: int(mesh_cfg.get(f"dcn_{a}", 1)) for a in MESH_AXES}
    if num_devices % num_granules:
        raise UserError(f"mesh: {num_devices} devices do not split evenly over {num_granules} slices/nodes")
    dcn_shape = _fill(dcn, num_granules, "dcn")
    ici_shape = _fill({a: int(mesh_cfg[a]) for a in MESH_AXES}, num_devices // num_granules, "ici")
    return ici_shape, dcn_shape


def build_mesh(mesh_cfg: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh with Auto axis types (GSPMD propagation).

    Granules for the DCN dimensions: TPU slices when the devices report several `slice_index` values, otherwise
    processes (one per GPU node) when any dcn_* size is > 1; with all dcn_* = 1 the mesh is flat.
    """
    devices = list(devices if devices is not None else jax.devices())
    slices = _granules(devices)
    wants_dcn = any(int(mesh_cfg.get(f"dcn_{a}", 1)) != 1 for a in MESH_AXES)
    granules = slices if slices > 1 else (len({d.process_index for d in devices}) if wants_dcn else 1)
    ici, dcn = mesh_shapes(mesh_cfg, len(devices), granules)
    if granules > 1:
        array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=slices == 1,
                                                     allow_split_physical_axes=True)
    else:
        array = mesh_utils.create_device_mesh(ici, devices, allow_split_physical_axes=True)
    mesh = Mesh(array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
    logging.info("mesh %s over %d devices (ici %s, dcn %s)", dict(mesh.shape), len(devices), ici, dcn)
    return mesh


# ----------------------------------------------------------------------------------------------------------------
# Logical axes -> shardings


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, tuple[str, ...]] = LOGICAL_AXIS_RULES) -> P:
    if len(names) != len(shape):
        raise ValueError(f"logical axes {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, size in zip(names, shape):
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ValueError(f"logical axis '{name}' has no row in the rules table")
        wanted = [a for a in rules[name] if mesh.shape.get(a, 1) > 1 and a not in used]
        axes = list(wanted)
        while axes and size % math.prod(mesh.shape[a] for a in axes):
            axes.pop()
        if axes != wanted and (name, size, tuple(wanted)) not in _logged_fallbacks:
            _logged_fallbacks.add((name, size, tuple(wanted)))
            logging.info("sharding: '%s' of size %d does not divide mesh axes %s; sharded over %s", name, size,
                         {a: mesh.shape[a] for a in wanted}, tuple(axes) or "nothing (replicated)")
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*spec)


def named_sharding(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh))


def activation_sharding_fn(mesh: Mesh):
    """The function `models.layers.activation_sharding` expects: (logical names, shape) -> sharding."""
    return lambda names, shape: named_sharding(mesh, names, shape)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading (row) dimension over the batch axes, the rest replicated."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    return NamedSharding(mesh, P(axes if axes else None, *([None] * (ndim - 1))))


def batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def process_rows(mesh: Mesh, global_rows: int) -> tuple[int, int]:
    """[start, stop) of the global batch rows this process must feed; they must be one contiguous block."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    starts = sorted({(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else global_rows)
                     for idx in index_map.values()})
    start, stop = starts[0][0], starts[-1][1]
    covered = sum(b - a for a, b in starts)
    if covered != stop - start:
        raise UserError(f"this process's devices hold non-contiguous batch rows {starts}; reorder the mesh axes "
                        "(dcn_* across hosts, ici within a host)")
    return start, stop


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh, global_rows: int) -> dict[str, jax.Array]:
    """Each process passes its rows (see `process_rows`); returns arrays of the global batch on the mesh."""
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        out[name] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value,
                                                           (global_rows,) + value.shape[1:])
    return out
