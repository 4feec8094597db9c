"""SigLIP text tower and the two-tower image-text score (big_vision `two_towers`, HF `SiglipModel`).

Text: token embedding + learned positions, bidirectional pre-LN blocks (the vision tower's `SiglipBlock`), final
LayerNorm, the state at the LAST position (SigLIP pads every caption to `max_length`, so it is a pad/EOS position),
a linear head. Score of a pair: `dot(l2norm(zimg), l2norm(ztxt)) * exp(logit_scale) + logit_bias`, the logit whose
sigmoid is SigLIP's match probability (HF `logits_per_image`, big_vision `zimg @ ztxt.T * exp(t) + b`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from oq2vl_jax.models import layers
from oq2vl_jax.models.presets import ModelOptions, SiglipPairConfig, SiglipTextConfig
from oq2vl_jax.models.siglip import SiglipBlock, SiglipPooledTower


class SiglipTextTower(nnx.Module):
    def __init__(self, cfg: SiglipTextConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg, self.dtype = cfg, jnp.dtype(opts.compute_dtype)
        d = cfg.width
        self.token_embed = nnx.Param(nnx.with_metadata(nnx.initializers.normal(0.02), logical_axes=("vocab", None))(
            rngs.params(), (cfg.vocab_size, d), jnp.float32))
        self.pos_embed = nnx.Param(nnx.with_metadata(nnx.initializers.normal(0.02), logical_axes=(None, None))(
            rngs.params(), (cfg.max_length, d), jnp.float32))

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make_blocks(rngs):
            return SiglipBlock(cfg, opts, rngs=rngs)  # reads width/heads/mlp_dim/eps/act: same names as vision

        self.blocks = make_blocks(rngs)
        self.norm = layers.LayerNorm(d, eps=cfg.layer_norm_eps, rngs=rngs)
        self.head = layers.Dense(d, cfg.projection_dim, axes=(None, None), dtype=self.dtype, rngs=rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        """token_ids [N, max_length] -> text embedding [N, projection_dim] (not normalised)."""
        if token_ids.shape[1] != self.cfg.max_length:
            raise ValueError(f"text tower expects exactly {self.cfg.max_length} tokens, got {token_ids.shape[1]}")
        x = jnp.take(self.token_embed[...], token_ids, axis=0).astype(self.dtype)
        x = x + self.pos_embed[...].astype(self.dtype)[None]
        graphdef, state = nnx.split(self.blocks)

        def body(h, block_state):
            return nnx.merge(graphdef, block_state)(h), None

        x, _ = jax.lax.scan(body, x, state)
        return self.head(self.norm(x)[:, -1])


def l2_normalize(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


class SiglipPair(nnx.Module):
    """Both towers + the learned temperature (stored as log) and bias."""

    def __init__(self, cfg: SiglipPairConfig, opts: ModelOptions, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        self.vision = SiglipPooledTower(cfg.vision, opts, rngs=rngs)
        self.text = SiglipTextTower(cfg.text, opts, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.zeros((), jnp.float32))
        self.logit_bias = nnx.Param(jnp.zeros((), jnp.float32))

    def embed_images(self, pixels: jax.Array) -> jax.Array:
        return l2_normalize(self.vision(pixels))

    def embed_texts(self, token_ids: jax.Array) -> jax.Array:
        return l2_normalize(self.text(token_ids))

    def logits(self, pixels: jax.Array, token_ids: jax.Array) -> jax.Array:
        """All pairs: [N_images, N_texts] (HF `logits_per_image`)."""
        sim = self.embed_images(pixels) @ self.embed_texts(token_ids).T
        return sim * jnp.exp(self.logit_scale[...]) + self.logit_bias[...]

    def pair_scores(self, pixels: jax.Array, token_ids: jax.Array) -> jax.Array:
        """Image i with text i: [N] (the diagonal of `logits`, without the N x N matrix)."""
        sim = jnp.sum(self.embed_images(pixels) * self.embed_texts(token_ids), axis=-1)
        return sim * jnp.exp(self.logit_scale[...]) + self.logit_bias[...]
