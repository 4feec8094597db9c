"""The CI guard on what the sharded train step moves: the demo-sized step compiled on 8 simulated CPU devices (no extra
package) moves at most 1.25x its FSDP lower bound (training/plan.py), and inside loops (the loss chunks, the vision
blocks, the decoder layers) only per-layer weights cross devices: nothing that grows with the vocabulary or the number
of images. Slow tests compile the same step for a small TPU slice (splash) and for 8x H100 when their optional
packages are installed (docs/performance.md, `.[plan-tpu]` / `.[plan-gpu]`)."""

import os
import runpy
import subprocess
import sys

import jax
import pytest

from fixtures.paths import REPO
from oq2vl_jax.training import plan

BOUND_RATIO = 1.25
VOCAB = 1152  # distinct from every other dimension of the demo model


def guard_config(mesh: str):
    cfg = runpy.run_path(os.path.join(REPO, "configs", "demo.py"))["get_config"]()
    cfg.model.update(vocab_size=VOCAB, remat="full", loss_chunk=32)  # 4 loss chunks per row of 128
    cfg.data.image_size = 36          # 9 x 9 = 81 patches of 4: distinct from the widths
    cfg.train.micro_batches = 2
    if mesh == "2x4":
        cfg.mesh.update(data=2, fsdp=4)
    return cfg


def largest_layer_weight(step) -> float:
    """Bytes (float32) of the largest weight of one layer / block: what a loop may gather per iteration."""
    biggest = 0
    for tree in (step.abstract.trainable, step.abstract.frozen):
        for tower in ("vision", "llm", "projector"):
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree.get(tower, {})):
                names = jax.tree_util.keystr(path)
                if "embed" in names and "llm" == tower and "layers" not in names:
                    continue  # the embedding table: gathered once per micro-batch, never inside a loop
                shape = leaf.shape[1:] if ("layers" in names or "blocks" in names) else leaf.shape
                biggest = max(biggest, 4 * int(jax.numpy.prod(jax.numpy.array(shape))))
    return float(biggest)


@pytest.fixture(scope="module", params=["8", "2x4"])
def compiled(request):
    cfg = guard_config(request.param)
    step = plan.compile_step(cfg, jax.devices()[:8])
    return cfg, step, plan.summary(step, cfg)


def test_collectives_within_bound_of_fsdp(compiled):
    cfg, step, s = compiled
    ratio = s["collective_bytes"] / s["bound_bytes"]
    detail = {k: (round(s["collectives"][k]), round(s["bound"][k])) for k in s["collectives"]}
    assert ratio <= BOUND_RATIO, f"{ratio:.2f}x the FSDP bound; by kind (moved, bound): {detail}; top: {s['top']}"


def test_loops_move_only_layer_weights(compiled):
    """A collective that runs more than once per micro-batch (inside the loss scan, the vision blocks or the decoder
    layers) moves at most one layer's weight: never [tokens, vocab] logits, the embedding table or image
    activations."""
    cfg, step, _ = compiled
    limit = largest_layer_weight(step)
    micro = int(cfg.train.micro_batches)
    offenders = [(c.kind, str(c.shape), c.count) for c in step.hlo.collectives
                 if c.count > micro and c.shape.elements * 4 > limit]
    vocab_sized = [(c.kind, str(c.shape), c.count) for c in step.hlo.collectives
                   if c.count > micro and VOCAB in c.shape.dims]
    assert not offenders and not vocab_sized, (offenders, vocab_sized)
    assert step.hlo.unknown_trip_counts == 0


def _extra_installed(module: str) -> bool:
    code = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("target,module", [("v5e-4", "libtpu"), ("8xh100", "jax_plugins.xla_cuda12")])
def test_demo_compiles_for_target_within_bound(target, module):
    """In a fresh process (the target's platform must be chosen before jax starts): the demo step compiled for the
    target through the train CLI's planner; skipped when the optional package is not installed."""
    if not _extra_installed(module):
        pytest.skip(f"{module} is not installed (pip install '.[plan-{'tpu' if 'v5' in target else 'gpu'}]')")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs", "demo.py"), "--dry_run",
         "--dry_run_compile", f"--config.hardware.target={target}", f"--config.model.vocab_size={VOCAB}",
         "--config.model.remat=full", "--config.model.attention=auto", "--config.train.micro_batches=2"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    ratio = [line for line in out.stdout.splitlines() if "x the FSDP bound" in line]
    assert ratio, out.stdout
    assert float(ratio[0].split("x the FSDP bound")[0].split()[-1]) <= BOUND_RATIO, out.stdout
    if "v5" in target:
        assert "splash" in out.stdout, out.stdout
