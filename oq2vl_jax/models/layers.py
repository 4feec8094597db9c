"""Pieces shared by both towers: dense layers with logical axes, norms, rotary embeddings, activations.

Parameters carry a `logical_axes` metadata tuple (one name per dimension). `oq2vl_jax.parallel` maps those names to
mesh axes through one rules table. We deliberately do not use Flax's eager `sharding`/`out_sharding` metadata: its name
and semantics changed across flax 0.12.x and it requires a mesh at construction time, which the converters and
`jax.eval_shape` users do not have.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH

Dtype = jnp.dtype


def _init(initializer, axes: Sequence[str | None]):
    return nnx.with_metadata(initializer, logical_axes=tuple(axes))


class Dense(nnx.Module):
    """y = x @ kernel (+ bias), kernel [in, out]; compute in `dtype`, parameters stored in `param_dtype`."""

    def __init__(self, in_features: int, out_features: int, *, axes: tuple[str | None, str | None],
                 use_bias: bool = True, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(_init(nnx.initializers.lecun_normal(), axes)(
            rngs.params(), (in_features, out_features), param_dtype))
        self.bias = (nnx.Param(_init(nnx.initializers.zeros_init(), axes[1:])(
            rngs.params(), (out_features,), param_dtype)) if use_bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class RMSNorm(nnx.Module):
    """Qwen2 RMSNorm: normalise in float32, cast back, then scale (the HF order of operations)."""

    def __init__(self, dim: int, *, eps: float, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.scale = nnx.Param(_init(nnx.initializers.ones_init(), ("norm",))(rngs.params(), (dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * x32.astype(dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias, statistics in float32."""

    def __init__(self, dim: int, *, eps: float, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
        self.scale = nnx.Param(_init(nnx.initializers.ones_init(), ("norm",))(rngs.params(), (dim,), param_dtype))
        self.bias = nnx.Param(_init(nnx.initializers.zeros_init(), ("norm",))(rngs.params(), (dim,), param_dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(dtype)


def gelu(x: jax.Array, kind: str) -> jax.Array:
    if kind == GELU_EXACT:
        return jax.nn.gelu(x, approximate=False)
    if kind == GELU_TANH:
        return jax.nn.gelu(x, approximate=True)
    raise ValueError(f"unknown GELU kind {kind!r}")


def rotary_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin [B, L, head_dim] in float32 for explicit per-token positions (HF's rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, L, heads, head_dim]; cos/sin [B, L, head_dim]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


# Activation sharding: `oq2vl_jax.parallel` installs a function mapping logical axis names to a sharding while a
# step is traced; without one (CPU tests, converters) `constrain` is the identity.
_activation_sharding = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(fn):
    token = _activation_sharding.set(fn)
    try:
        yield
    finally:
        _activation_sharding.reset(token)


def partition_spec(logical_axes: tuple[str | None, ...], shape) -> jax.sharding.PartitionSpec | None:
    """The mesh partitioning the installed rules give these logical axes, or None when none is installed."""
    fn = _activation_sharding.get()
    return None if fn is None else fn(logical_axes, shape).spec


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    fn = _activation_sharding.get()
    if fn is None:
        return x
    return jax.lax.with_sharding_constraint(x, fn(logical_axes, x.shape))
