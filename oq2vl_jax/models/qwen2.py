"""Qwen2 decoder (HF `Qwen2ForCausalLM` numerics): GQA with q/k/v bias and no o_proj bias, RMSNorm, SwiGLU, RoPE at
explicit per-token positions, optional tied embeddings. Layers are stacked and run with `lax.scan` under a
configurable remat policy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from oq2vl_jax.models import layers
from oq2vl_jax.models.attention import attention
from oq2vl_jax.models.presets import ModelOptions, Qwen2Config

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


class Qwen2Block(nnx.Module):
    def __init__(self, cfg: Qwen2Config, opts: ModelOptions, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(opts.compute_dtype)
        d, qd, kvd = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.input_norm = layers.RMSNorm(d, eps=cfg.rms_norm_eps, rngs=rngs)
        self.q = layers.Dense(d, qd, axes=("embed", "q_heads"), dtype=dtype, rngs=rngs)
        self.k = layers.Dense(d, kvd, axes=("embed", "kv_heads"), dtype=dtype, rngs=rngs)
        self.v = layers.Dense(d, kvd, axes=("embed", "kv_heads"), dtype=dtype, rngs=rngs)
        self.o = layers.Dense(qd, d, axes=("q_heads", "embed"), use_bias=False, dtype=dtype, rngs=rngs)
        self.post_attention_norm = layers.RMSNorm(d, eps=cfg.rms_norm_eps, rngs=rngs)
        self.gate = layers.Dense(d, cfg.intermediate_size, axes=("embed", "mlp"), use_bias=False, dtype=dtype,
                                 rngs=rngs)
        self.up = layers.Dense(d, cfg.intermediate_size, axes=("embed", "mlp"), use_bias=False, dtype=dtype,
                               rngs=rngs)
        self.down = layers.Dense(cfg.intermediate_size, d, axes=("mlp", "embed"), use_bias=False, dtype=dtype,
                                 rngs=rngs)
        self.cfg, self.backend, self.splash_interpret = cfg, opts.attention, opts.splash_interpret

    def __call__(self, x, cos, sin, segment_ids):
        cfg = self.cfg
        b, t, _ = x.shape
        h = self.input_norm(x)
        q = layers.apply_rotary(self.q(h).reshape(b, t, cfg.num_heads, cfg.head_dim), cos, sin)
        k = layers.apply_rotary(self.k(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), cos, sin)
        v = self.v(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        a = attention(q, k, v, segment_ids, causal=True, backend=self.backend,
                      splash_interpret=self.splash_interpret)
        a = checkpoint_name(a, "attention_out")
        x = x + self.o(a.reshape(b, t, -1))
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        h = self.post_attention_norm(x)
        x = x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))
        return layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))


class Qwen2(nnx.Module):
    def __init__(self, cfg: Qwen2Config, opts: ModelOptions, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg, self.opts, self.dtype = cfg, opts, jnp.dtype(opts.compute_dtype)
        self.embed = nnx.Param(nnx.with_metadata(nnx.initializers.normal(0.02), logical_axes=("vocab", "embed"))(
            rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32))

        @nnx.split_rngs(splits=cfg.num_layers)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make_layers(rngs):
            return Qwen2Block(cfg, opts, rngs=rngs)

        self.layers = make_layers(rngs)
        self.norm = layers.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, rngs=rngs)
        self.lm_head = (None if cfg.tie_word_embeddings else
                        layers.Dense(cfg.hidden_size, cfg.vocab_size, axes=("embed", "vocab"), use_bias=False,
                                     dtype=self.dtype, rngs=rngs))

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)

    def hidden_states(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """x [B, L, D] input embeddings -> final-normed hidden states [B, L, D]."""
        cos, sin = layers.rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        graphdef, state = nnx.split(self.layers)

        def body(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids), None

        if self.opts.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT[self.opts.remat], prevent_cse=False)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        x, _ = jax.lax.scan(body, x, state)
        return self.norm(x)

    def unembed_kernel(self) -> tuple[jax.Array, str]:
        """The output projection and its layout: ([V, D], "vd") when tied, ([D, V], "dv") otherwise."""
        if self.lm_head is None:
            return self.embed[...], "vd"
        return self.lm_head.kernel[...], "dv"

    def logits(self, hidden: jax.Array) -> jax.Array:
        kernel, layout = self.unembed_kernel()
        eq = "bld,vd->blv" if layout == "vd" else "bld,dv->blv"
        return jnp.einsum(eq, hidden, kernel.astype(hidden.dtype), preferred_element_type=jnp.float32)

    def __call__(self, input_ids, positions, segment_ids) -> jax.Array:
        return self.logits(self.hidden_states(self.embed_tokens(input_ids), positions, segment_ids))
