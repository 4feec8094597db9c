"""Average-pooling projector (the reference's `AvgPoolProjector`).

Adaptive average pooling of the g x g patch grid to n x n with exactly PyTorch `AdaptiveAvgPool2d` bins
(start = floor(i*g/n), end = ceil((i+1)*g/n)); for 27 -> 12 the windows are 3 wide and overlap, for 27 -> 27 the pool
is the identity. It is a fixed [n, g] matrix applied on both grid axes. Then Linear -> exact GELU -> Linear.
The pool size has no parameters, so 144- and 729-token models share weights.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from oq2vl_jax.models import layers
from oq2vl_jax.models.presets import GELU_EXACT


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging weights of torch.nn.AdaptiveAvgPool1d bins."""
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(features: jax.Array, out_size: int) -> jax.Array:
    """features [N, g*g, D] (row-major h, w) -> [N, out*out, D] (row-major)."""
    n, t, d = features.shape
    g = math.isqrt(t)
    if g == out_size:
        return features
    pool = jnp.asarray(adaptive_pool_matrix(g, out_size), jnp.float32)
    grid = features.reshape(n, g, g, d)
    out = jnp.einsum("ih,jw,nhwd->nijd", pool, pool, grid.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
    return out.reshape(n, out_size * out_size, d).astype(features.dtype)


class Projector(nnx.Module):
    def __init__(self, vision_width: int, llm_width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = layers.Dense(vision_width, llm_width, axes=("vision_embed", "embed"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.Dense(llm_width, llm_width, axes=("embed", "projector_out"), dtype=dtype, rngs=rngs)

    def __call__(self, features: jax.Array, pool_size: int) -> jax.Array:
        x = adaptive_avg_pool(features, pool_size)
        return self.fc2(layers.gelu(self.fc1(x), GELU_EXACT))
