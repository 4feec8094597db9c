"""The jitted train step on 8 CPU devices: identical loss curves on 1 device and on every mesh, gradient
accumulation = one bigger batch, frozen towers untouched, non-finite steps skipped (helpers: fixtures/training.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures.training import OPTIM, TINY, build, random_host_params, run_steps, synthetic_batch, tiny_options
from oq2vl_jax import parallel
from oq2vl_jax.training import optimizer as optim_lib, state as state_lib

@pytest.fixture(scope="module")
def host_params():
    return random_host_params()


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
