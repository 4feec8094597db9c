"""The jitted train step on 8 CPU devices: identical loss curves on 1 device and on every mesh, gradient
accumulation = one bigger batch, frozen towers untouched, non-finite steps skipped.

Also the shared helpers of the training tests: the tiny model, synthetic packed batches and a checkpointable
synthetic iterator (batch k is a pure function of (seed, k), so any process can cut out its own rows)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from oq2vl_jax import parallel
from oq2vl_jax.bench.shapes import pretraining_rows
from oq2vl_jax.data.stats import empty_stats
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.training import optimizer as optim_lib, state as state_lib
from oq2vl_jax.training.step import make_train_step

TINY = VLMConfig(vision=vision_preset("siglip-tiny"), llm=llm_preset("qwen2-tiny"), tokens_per_image=4)
ROW_LENGTH = 32
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # 3-5x faster XLA:CPU compiles; tiny models run fine
OPTIM = dict(lr=3e-3, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, warmup_ratio=0.1, clip_norm=1.0)


def tiny_options(**kw) -> ModelOptions:
    return ModelOptions(attention="xla", vision_chunk=2, loss_chunk=64, **kw)


def synthetic_batch(rows: int, seed: int) -> dict[str, np.ndarray]:
    return pretraining_rows(rows, config=TINY, row_length=ROW_LENGTH, images_per_row=2, seed=seed)


class SyntheticIterator:
    """The data pipeline's iterator interface (next, get_state, set_state) over synthetic global batches; yields rows
    [row_start, row_stop) of each, plus "stats"."""

    def __init__(self, global_rows: int, row_start: int = 0, row_stop: int | None = None, seed: int = 0):
        self.global_rows, self.seed, self.index = global_rows, seed, 0
        self.row_start, self.row_stop = row_start, global_rows if row_stop is None else row_stop

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = synthetic_batch(self.global_rows, seed=self.seed * 100_003 + self.index)
        self.index += 1
        local = {k: v[self.row_start:self.row_stop] for k, v in batch.items()}
        stats = empty_stats()
        stats["real_tokens"] = int((local["segment_ids"] > 0).sum())
        stats["capacity_tokens"] = int(local["segment_ids"].size)
        stats["num_images"] = stats["documents"] = int(local["image_valid"].sum())
        local["stats"] = stats
        return local

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def synthetic_factory(seed_offset: int = 0):
    """A loop.DataFactory over SyntheticIterator: rows of this process's block of the global batch."""
    def make(split, seed, process_index, process_count, rows):
        start = process_index * rows
        return SyntheticIterator(rows * process_count, start, start + rows, seed=seed + seed_offset + (split == "eval"))
    return make


def random_host_params(seed: int = 0) -> dict:
    mesh = parallel.build_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return jax.device_get(state_lib.ModelParts(TINY, tiny_options()).random_params(seed, mesh, FAST_COMPILE))


@pytest.fixture(scope="module")
def host_params():
    return random_host_params()


def build(host_params, mesh_shape, devices, *, stage="pretrain", micro_batches=1, options=None, total=10):
    mesh = parallel.build_mesh(dict(zip(parallel.MESH_AXES, mesh_shape)), devices)
    parts = state_lib.ModelParts(TINY, options or tiny_options())
    trainable, _ = state_lib.split_params(parts.abstract_params, stage)
    tx = optim_lib.make_optimizer(OPTIM, total, parts.decay_mask(trainable))
    state = state_lib.init_state(host_params, parts, stage, "bfloat16", tx, mesh, FAST_COMPILE)
    _, shardings = state_lib.abstract_state(parts, stage, "bfloat16", tx, mesh)
    step = make_train_step(parts, tx, mesh, micro_batches=micro_batches, state_shardings=shardings,
                           lr_fn=optim_lib.lr_schedule(OPTIM["lr"], total, OPTIM["warmup_ratio"]),
                           compiler_options=FAST_COMPILE)
    return mesh, state, step


def run_steps(mesh, state, step, batches, rows):
    losses = []
    for batch in batches:
        state, metrics = step(state, parallel.host_to_global(batch, mesh, rows))
        losses.append(float(metrics["loss"]))
    return state, losses


def test_same_loss_curve_on_one_device_and_every_mesh(host_params):
    batches = [synthetic_batch(16, seed=i) for i in range(3)]
    curves = {}
    for shape, n in (((1, 1, 1), 1), ((8, 1, 1), 8), ((2, 4, 1), 8), ((2, 2, 2), 8)):
        mesh, state, step = build(host_params, shape, jax.devices()[:n], micro_batches=2)
        state, curves[shape] = run_steps(mesh, state, step, batches[:-1], 16)
        _, metrics = step(state, parallel.host_to_global(batches[-1], mesh, 16))
        curves[shape].append(float(metrics["loss"]))
    # the FLOP counts are global sums, whatever the mesh
    real = batches[-1]["segment_ids"] > 0
    assert float(metrics["real_tokens"]) == real.sum()
    assert float(metrics["causal_pairs"]) == np.where(real, batches[-1]["positions"] + 1, 0).sum()
    assert float(metrics["num_images"]) == batches[-1]["image_valid"].sum()
    assert float(metrics["capacity_tokens"]) == real.size
    reference = curves.pop((1, 1, 1))
    assert len(set(reference)) == len(reference)  # the weights moved between steps
    for shape, curve in curves.items():
        np.testing.assert_allclose(curve, reference, rtol=2e-5, err_msg=str(shape))


def test_accumulating_four_micro_batches_equals_one_big_batch(host_params):
    batches = [synthetic_batch(16, seed=10 + i) for i in range(2)]
    results = {}
    for micro in (1, 4):
        mesh, state, step = build(host_params, (2, 2, 1), jax.devices()[:4], micro_batches=micro)
        state, losses = run_steps(mesh, state, step, batches, 16)
        results[micro] = (losses, jax.device_get(state.trainable))
    np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-5)  # step 2's loss follows step 1's update
    # Adam's first updates are ~lr * sign(gradient): a float-rounding difference in a gradient near zero can move
    # one weight by up to 2 lr, so the weights are compared at a fraction of lr, not at float precision
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=0.05 * OPTIM["lr"]), results[4][1],
                 results[1][1])


def test_reference_compat_averages_micro_batch_means(host_params):
    batch = synthetic_batch(8, seed=3)
    mesh, state, step = build(host_params, (1, 1, 1), jax.devices()[:1], micro_batches=2,
                              options=tiny_options(reference_compat=True))
    parts = state_lib.ModelParts(TINY, tiny_options(reference_compat=True))
    params = jax.device_get(state_lib.merge_params(state.trainable, state.frozen))
    means = []
    for m in range(2):  # micro-batch m holds rows m, m + 2, ...
        micro = {k: jnp.asarray(v[m::2]) for k, v in batch.items()}
        nll, weight = parts.model(params).loss(micro)
        means.append(float(nll / weight))
    _, metrics = step(state, parallel.host_to_global(batch, mesh, 8))
    np.testing.assert_allclose(float(metrics["loss"]), np.mean(means), rtol=1e-5)


def test_frozen_tower_untouched_no_optimizer_state_and_non_finite_steps_skipped(host_params):
    mesh, state, step = build(host_params, (2, 2, 2), jax.devices())
    assert set(state.trainable) == {"projector", "llm"} and set(state.frozen) == {"vision"}
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.frozen))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable))
    opt_paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)}
    assert not any("vision" in p for p in opt_paths) and any("llm" in p for p in opt_paths)
    before = jax.device_get(state.frozen)
    trainable_before = jax.device_get(state.trainable)
    state, _ = run_steps(mesh, state, step, [synthetic_batch(16, seed=i) for i in range(2)], 16)
    after = jax.device_get(state.frozen)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16)), before, after)
    assert not np.array_equal(trainable_before["llm"]["embed"], jax.device_get(state.trainable)["llm"]["embed"])

    # a non-finite loss skips the update inside the step (parameters and optimizer state unchanged) and is counted
    bad = synthetic_batch(16, seed=5)
    bad["loss_weights"] = np.where(bad["loss_weights"] > 0, np.float32(np.nan), np.float32(0))
    trainable, opt = jax.device_get(state.trainable), jax.device_get(state.opt_state)
    for expected_in_row in (1, 2):
        state, metrics = step(state, parallel.host_to_global(bad, mesh, 16))
        assert int(metrics["skipped_nonfinite"]) == 1 and int(metrics["nonfinite_in_row"]) == expected_in_row
    jax.tree.map(np.testing.assert_array_equal, trainable, jax.device_get(state.trainable))
    jax.tree.map(np.testing.assert_array_equal, opt, jax.device_get(state.opt_state))
    assert int(state.step) == 4 and int(state.nonfinite_total) == 2
    state, metrics = step(state, parallel.host_to_global(synthetic_batch(16, seed=6), mesh, 16))
    assert int(metrics["skipped_nonfinite"]) == 0 and int(state.nonfinite_in_row) == 0
    assert int(state.nonfinite_total) == 2 and int(optim_lib.update_count(state.opt_state)) == 3
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16)), before,
                 jax.device_get(state.frozen))


def test_align_trains_only_the_projector_and_full_trains_everything(host_params):
    mesh, state, step = build(host_params, (1, 1, 1), jax.devices()[:1], stage="align")
    assert set(state.trainable) == {"projector"} and set(state.frozen) == {"vision", "llm"}
    llm_before = jax.device_get(state.frozen["llm"])
    state, losses = run_steps(mesh, state, step, [synthetic_batch(8, seed=1)], 8)
    assert np.isfinite(losses[0])
    jax.tree.map(np.testing.assert_array_equal, llm_before, jax.device_get(state.frozen["llm"]))
    mesh, state, _ = build(host_params, (1, 1, 1), jax.devices()[:1], stage="full")
    assert set(state.trainable) == {"vision", "projector", "llm"} and not state.frozen
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.trainable["vision"]))
