"""SigLIP vision tower (timm `vit_so400m_patch14_siglip_384` / HF `SiglipVisionModel`).

`SiglipTower` (the VLM's path) returns the output of block `feature_layer` (default the second-to-last) with no final
LayerNorm and no pooling head, as the reference uses. Blocks after it are not built, so they cost neither memory nor
FLOPs. Blocks are stacked along a leading "layers" axis and run with `lax.scan`.

`SiglipPooledTower` is the image-embedding path for image-text scores: every block, the final LayerNorm and the
multi-head attention pooling ("MAP") head, as HF `SiglipVisionModel.pooler_output` / timm `attn_pool`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from oq2vl_jax.models import layers
from oq2vl_jax.models.attention import attention
from oq2vl_jax.models.presets import ModelOptions, SiglipConfig


# Images are the batch: without these constraints GSPMD may run the tower tensor-parallel over the FSDP-sharded
# width, every device computing every image and all-reducing activations in every block.
_ACTIVATION = ("activation_batch", "activation_length", "activation_embed")


class SiglipBlock(nnx.Module):
    def __init__(self, cfg: SiglipConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(opts.compute_dtype)
        d = cfg.width
        self.norm1 = layers.LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.q = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.k = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.v = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.out = layers.Dense(d, d, axes=("vision_heads", "vision_embed"), dtype=dtype, rngs=rngs)
        self.norm2 = layers.LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.fc1 = layers.Dense(d, cfg.mlp_dim, axes=("vision_embed", "vision_mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.Dense(cfg.mlp_dim, d, axes=("vision_mlp", "vision_embed"), dtype=dtype, rngs=rngs)
        self.num_heads, self.head_dim, self.act = cfg.num_heads, cfg.head_dim, cfg.hidden_act
        self.backend, self.splash_interpret = opts.attention, opts.splash_interpret

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, _ = x.shape
        h = self.norm1(x)
        split = lambda y: y.reshape(n, t, self.num_heads, self.head_dim)
        a = attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), None, causal=False,
                      backend=self.backend, splash_interpret=self.splash_interpret)
        x = layers.constrain(x + self.out(a.reshape(n, t, -1)), _ACTIVATION)
        return layers.constrain(x + self.fc2(layers.gelu(self.fc1(self.norm2(x)), self.act)), _ACTIVATION)


class SiglipTower(nnx.Module):
    def __init__(self, cfg: SiglipConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg, self.dtype = cfg, jnp.dtype(opts.compute_dtype)
        p, d = cfg.patch_size, cfg.width
        # Patch embedding as a stride-p convolution, kernel in HWIO layout [p, p, 3, width].
        self.patch_kernel = nnx.Param(nnx.with_metadata(nnx.initializers.lecun_normal(in_axis=(0, 1, 2)),
                                                        logical_axes=(None, None, None, "vision_embed"))(
            rngs.params(), (p, p, 3, d), jnp.float32))
        self.patch_bias = nnx.Param(nnx.with_metadata(nnx.initializers.zeros_init(), logical_axes=("vision_embed",))(
            rngs.params(), (d,), jnp.float32))
        self.pos_embed = nnx.Param(nnx.with_metadata(nnx.initializers.normal(0.02),
                                                     logical_axes=(None, "vision_embed"))(
            rngs.params(), (cfg.num_patches, d), jnp.float32))

        @nnx.split_rngs(splits=cfg.num_blocks_run)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make_blocks(rngs):
            return SiglipBlock(cfg, opts, rngs=rngs)

        self.blocks = make_blocks(rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        """pixels [N, H, W, 3] normalised to [-1, 1] -> features [N, num_patches, width]."""
        cfg = self.cfg
        n, g, p = pixels.shape[0], cfg.grid, cfg.patch_size
        x = pixels[:, : g * p, : g * p, :].astype(self.dtype)  # the conv never sees the last H % p rows/cols
        x = x.reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, p * p * 3)
        kernel = self.patch_kernel[...].reshape(p * p * 3, cfg.width).astype(self.dtype)
        x = jnp.dot(x, kernel) + self.patch_bias[...].astype(self.dtype)
        x = layers.constrain(x + self.pos_embed[...].astype(self.dtype)[None], _ACTIVATION)

        graphdef, state = nnx.split(self.blocks)

        def body(h, block_state):
            return nnx.merge(graphdef, block_state)(h), None

        x, _ = jax.lax.scan(body, x, state)
        return x


class MapHead(nnx.Module):
    """Multi-head attention pooling: a learned probe attends over the tokens, then a residual MLP on its LayerNorm
    (HF `SiglipMultiheadAttentionPoolingHead`, timm `AttentionPoolLatent`, big_vision `MAPHead`). Returns probe 0."""

    def __init__(self, width: int, mlp_dim: int, num_heads: int, *, eps: float, act: str, dtype, rngs: nnx.Rngs):
        d = width
        self.probe = nnx.Param(nnx.with_metadata(nnx.initializers.normal(0.02), logical_axes=(None, None, "vision_embed"))(
            rngs.params(), (1, 1, d), jnp.float32))
        self.q = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.k = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.v = layers.Dense(d, d, axes=("vision_embed", "vision_heads"), dtype=dtype, rngs=rngs)
        self.out = layers.Dense(d, d, axes=("vision_heads", "vision_embed"), dtype=dtype, rngs=rngs)
        self.norm = layers.LayerNorm(d, eps=eps, rngs=rngs)
        self.fc1 = layers.Dense(d, mlp_dim, axes=("vision_embed", "vision_mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = layers.Dense(mlp_dim, d, axes=("vision_mlp", "vision_embed"), dtype=dtype, rngs=rngs)
        self.num_heads, self.head_dim, self.act, self.dtype = num_heads, d // num_heads, act, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, _ = x.shape
        probe = jnp.broadcast_to(self.probe[...].astype(self.dtype), (n,) + self.probe.shape[1:])
        split = lambda y: y.reshape(y.shape[0], y.shape[1], self.num_heads, self.head_dim)
        # Cross-attention (1 query, t keys): the dense XLA path, whatever backend the tower uses.
        a = attention(split(self.q(probe)), split(self.k(x)), split(self.v(x)), None, causal=False, backend="xla")
        h = self.out(a.reshape(n, probe.shape[1], -1))
        h = h + self.fc2(layers.gelu(self.fc1(self.norm(h)), self.act))
        return h[:, 0]


class SiglipPooledTower(nnx.Module):
    """pixels -> image embedding [N, width]: all blocks, final LayerNorm, MAP head. Its `trunk` has the same
    parameters as a `SiglipTower` built with feature_layer -1."""

    def __init__(self, cfg: SiglipConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        cfg = dataclasses.replace(cfg, feature_layer=-1)
        dtype = jnp.dtype(opts.compute_dtype)
        self.trunk = SiglipTower(cfg, opts, rngs=rngs)
        self.norm = layers.LayerNorm(cfg.width, eps=cfg.layer_norm_eps, rngs=rngs)
        self.head = MapHead(cfg.width, cfg.mlp_dim, cfg.num_heads, eps=cfg.layer_norm_eps, act=cfg.hidden_act,
                            dtype=dtype, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        return self.head(self.norm(self.trunk(pixels)))
