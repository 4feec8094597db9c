"""Projector parity with torch.nn.AdaptiveAvgPool2d + the reference MLP (Linear -> exact GELU -> Linear)."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from fixtures.model import TorchProjector, projector_tree, to_numpy
from oq2vl_jax.models import params as P
from oq2vl_jax.models.projector import Projector, adaptive_pool_matrix


def test_27_to_12_windows_are_3_wide_and_overlap():
    m = adaptive_pool_matrix(27, 12)
    starts = [int(np.flatnonzero(row)[0]) for row in m]
    widths = [int(np.count_nonzero(row)) for row in m]
    assert starts == [0, 2, 4, 6, 9, 11, 13, 15, 18, 20, 22, 24]
    assert widths == [3] * 12
    np.testing.assert_array_equal(adaptive_pool_matrix(27, 27), np.eye(27, dtype=np.float32))


@pytest.mark.parametrize("grid,pool", [(27, 12), (27, 27), (7, 3), (10, 4)])
def test_matches_torch(grid, pool):
    vision, llm = 24, 40
    ref = TorchProjector(vision, llm, pool)
    x = np.random.default_rng(grid * pool).normal(size=(2, grid * grid, vision)).astype(np.float32)
    with torch.no_grad():
        want = to_numpy(ref(torch.from_numpy(x)))
    ours = P.load_params(nnx.eval_shape(lambda: Projector(vision, llm, rngs=nnx.Rngs(0))), projector_tree(ref))
    got = np.asarray(jax.jit(lambda m, x: m(x, pool))(ours, x))
    assert got.shape == (2, pool * pool, llm)
    assert np.abs(got - want).max() <= 1e-5


def test_same_weights_serve_144_and_729_tokens():
    ours = Projector(1152, 16, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(1, 729, 1152)).astype(np.float32)
    assert ours(x, 12).shape == (1, 144, 16)
    assert ours(x, 27).shape == (1, 729, 16)


def test_real_projector_size():
    ours = nnx.eval_shape(lambda: Projector(1152, 1536, rngs=nnx.Rngs(0)))
    shapes = {k: v.shape for k, v in P.flatten(nnx.state(ours, nnx.Param).to_pure_dict()).items()}
    assert shapes == {"fc1/kernel": (1152, 1536), "fc1/bias": (1536,), "fc2/kernel": (1536, 1536), "fc2/bias": (1536,)}
