"""Hardware the planner compiles for without having it: names, datasheet facts, and the devices of a target.

A target is named by `hardware.target`:
  TPU   v5p-N, v4-N (N = TensorCores, 2 per chip), v5e-N, v6e-N (N = chips); `hardware.num_slices` slices of it
        (multi-slice: the dcn_* mesh axes span slices). Devices come from libtpu's topology API
        (`jax.experimental.topologies.get_topology_desc`, as MaxText's `train_compile.py`), which needs the optional
        `libtpu` package (`pip install '.[plan-tpu]'`).
  GPU   8xa100-40gb, 8xh100, 8xh200: one node of 8; `hardware.num_slices` nodes. Devices come from the CUDA PJRT
        plugin with XLA's GPU target spec for the card (target_specs/*.txtpb, from openxla/xla
        `xla/backends/gpu/target_config/specs/`), which needs the optional `jax-cuda12-plugin`
        (`pip install '.[plan-gpu]'`). No autotuning is possible without a card, so Triton GEMMs are turned off.
  CPU   cpu-N: N simulated host devices (XLA_FLAGS=--xla_force_host_platform_device_count=N), no extra package.

Compiling for a TPU or GPU target needs jax's platform to be "cpu" (the target's devices are descriptions, not
devices); `prepare_process` sets it before jax starts any backend.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

from oq2vl_jax.errors import UserError

SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "target_specs")


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Per-device datasheet facts (bf16 dense peak; HBM; interconnect bandwidth one way, all links of a device)."""
    device_kind: str             # as jax reports it
    peak_flops: float
    hbm_gib: float
    hbm_bytes_per_s: float
    link_bytes_per_s: float      # ICI (TPU) / NVLink (GPU), per device, one direction, every link together
    dcn_bytes_per_s: float       # across slices / nodes, per device
    spec_file: str = ""          # GPU: XLA target spec in target_specs/


# Datasheets: cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e (peak bf16, HBM, ICI per chip); NVIDIA A100 / H100 /
# H200 SXM datasheets (peak dense bf16, HBM, NVLink 600 / 900 / 900 GB/s both directions); DCN and inter-node figures
# are typical (GPU: one 200 Gb/s HDR or 400 Gb/s NDR NIC per GPU; TPU: 200 Gb/s per 4-chip host), for projections.
HARDWARE = {
    "v4": Hardware("TPU v4", 275e12, 32.0, 1.2e12, 2400e9 / 8 / 2, 200e9 / 8 / 4),
    "v5e": Hardware("TPU v5 lite", 197e12, 16.0, 0.819e12, 1600e9 / 8 / 2, 200e9 / 8 / 4),
    "v5p": Hardware("TPU v5", 459e12, 95.0, 2.765e12, 4800e9 / 8 / 2, 200e9 / 8 / 4),
    "v6e": Hardware("TPU v6 lite", 918e12, 32.0, 1.64e12, 3584e9 / 8 / 2, 200e9 / 8 / 4),
    "a100-40gb": Hardware("NVIDIA A100-SXM4-40GB", 312e12, 39.4, 1.555e12, 300e9, 25e9, "a100_sxm_40.txtpb"),
    "h100": Hardware("NVIDIA H100 80GB HBM3", 989e12, 79.1, 3.35e12, 450e9, 50e9, "h100_sxm.txtpb"),
    "h200": Hardware("NVIDIA H200 141GB HBM3e", 989e12, 141.0, 4.8e12, 450e9, 50e9, "h200.txtpb"),
    "cpu": Hardware("cpu", 0.0, 0.0, 0.0, 0.0, 0.0),
}

# jax device_kind substrings (lower case) -> HARDWARE key, most specific first
_KINDS = (("h100", "h100"), ("h800", "h100"), ("h200", "h200"), ("a100", "a100-40gb"), ("tpu v6 lite", "v6e"),
          ("tpu v6e", "v6e"), ("tpu v5 lite", "v5e"), ("tpu v5e", "v5e"), ("tpu v5p", "v5p"), ("tpu v5", "v5p"),
          ("tpu v4", "v4"))


def kind_hardware(device_kind: str) -> Hardware:
    """The facts of a jax device_kind; unknown kinds (CPU) have zero peaks."""
    kind = device_kind.lower()
    return next((HARDWARE[key] for sub, key in _KINDS if sub in kind), HARDWARE["cpu"])


# chips -> (topology, chips per host bounds, wrap), MaxText `accelerator_to_spec_map.py`'s table for these sizes
_TORUS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 192: "4x4x12",
             256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}
_TORUS_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_TPU_PREFIX = {"v4": "v4", "v5p": "v5", "v5e": "v5e", "v6e": "v6e"}
TPU_GENERATIONS = tuple(_TPU_PREFIX)
GPU_CARDS = ("a100-40gb", "h100", "h200")
GPU_PER_NODE = 8


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str                # tpu | gpu | cpu
    family: str                  # key of HARDWARE
    chips: int                   # per slice / node
    num_slices: int

    @property
    def hardware(self) -> Hardware:
        return HARDWARE[self.family]

    @property
    def num_devices(self) -> int:
        return self.chips * self.num_slices


def parse_target(name: str, num_slices: int = 1) -> Target:
    """`hardware.target` -> Target; a name we cannot compile for is a UserError naming the ones we can."""
    text = name.strip().lower()
    m = re.fullmatch(r"(v4|v5p|v5e|v6e)-(\d+)", text)
    if m:
        gen, n = m.group(1), int(m.group(2))
        chips = n // 2 if gen in ("v4", "v5p") else n
        table = _TORUS_3D if gen in ("v4", "v5p") else _TORUS_2D
        if chips not in table:
            raise UserError(f"hardware.target={name!r}: no {gen} slice of that size is known; sizes: "
                            + ", ".join(f"{gen}-{c * (2 if gen in ('v4', 'v5p') else 1)}" for c in table))
        return Target(name, "tpu", gen, chips, num_slices)
    m = re.fullmatch(r"(\d+)x(a100-40gb|h100|h200)", text)
    if m:
        if int(m.group(1)) != GPU_PER_NODE:
            raise UserError(f"hardware.target={name!r}: GPU targets are nodes of {GPU_PER_NODE} "
                            f"(8x{m.group(2)}); set hardware.num_slices for several nodes")
        return Target(name, "gpu", m.group(2), GPU_PER_NODE, num_slices)
    m = re.fullmatch(r"cpu-(\d+)", text)
    if m:
        return Target(name, "cpu", "cpu", int(m.group(1)), num_slices)
    raise UserError(f"hardware.target={name!r} is not a target the planner knows; use v5p-N, v4-N, v5e-N, v6e-N, "
                    f"8x{{{','.join(GPU_CARDS)}}} or cpu-N (and hardware.num_slices for several slices / nodes)")


def required_package(target: Target) -> str | None:
    """The optional module compiling for `target` needs, when it is not installed; None when it is (or none is)."""
    module, extra = {"tpu": ("libtpu", "plan-tpu"), "gpu": ("jax_plugins.xla_cuda12", "plan-gpu")}.get(
        target.platform, (None, None))
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"pip install '.[{extra}]' (the optional {module.split('.')[-1]} package)"


def prepare_process(target: Target) -> None:
    """Before jax starts a backend: TPU / GPU targets are compiled from the CPU platform."""
    if target.platform == "cpu":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={target.num_devices}".strip()
    if target.platform in ("tpu", "gpu"):
        os.environ["JAX_PLATFORMS"] = "cpu"
        import jax
        jax.config.update("jax_platforms", "cpu")


def compiler_options(target: Target) -> dict | None:
    # nothing can be autotuned without a card; Triton GEMMs would need it ("Couldn't find output tile sizes")
    return {"xla_gpu_enable_triton_gemm": False} if target.platform == "gpu" else None


def target_devices(target: Target) -> list:
    """The target's devices (descriptions a step can be compiled for)."""
    import jax
    from jax.experimental import topologies

    if target.platform == "cpu":
        devices = jax.devices("cpu")
        if len(devices) < target.num_devices:
            raise UserError(f"hardware.target={target.name}: this process has {len(devices)} CPU devices; run with "
                            f"XLA_FLAGS=--xla_force_host_platform_device_count={target.num_devices}")
        return devices[:target.num_devices]
    missing = required_package(target)
    if missing:
        raise UserError(f"hardware.target={target.name}: compiling for {target.platform.upper()} needs {missing}")
    if target.platform == "tpu":
        gen = target.family
        table = _TORUS_3D if gen in ("v4", "v5p") else _TORUS_2D
        shape = table[target.chips]
        dims = [int(x) for x in shape.split("x")]
        wrap = tuple(d >= 4 for d in dims) if len(dims) == 3 and min(dims) >= 4 else tuple(d >= 16 for d in dims)
        wrap = tuple(wrap) + (False,) * (3 - len(wrap))
        desc = topologies.get_topology_desc(
            topology_name=f"{_TPU_PREFIX[gen]}:{shape}", platform="tpu",
            chip_config_name="megacore" if gen in ("v4", "v5p") else "default", chips_per_host_bounds=(2, 2, 1),
            num_slices=target.num_slices, wrap=wrap)
        return list(desc.devices)
    with open(os.path.join(SPEC_DIR, target.hardware.spec_file)) as f:
        spec = f.read()
    desc = topologies.get_topology_desc(target.family, "cuda", target_config=spec,
                                        topology=f"1x{target.num_slices}x{GPU_PER_NODE}")
    return list(desc.devices)
