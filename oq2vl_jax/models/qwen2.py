"""Qwen2 decoder (HF `Qwen2ForCausalLM` numerics): GQA with q/k/v bias and no o_proj bias, RMSNorm, SwiGLU, RoPE at
explicit per-token positions, optional tied embeddings. Layers are stacked and run with `lax.scan` under a
configurable remat policy.

With a `KVCache` (models/cache.py) the same layers write their keys and values into the cache and attend over it:
prefill (the whole right-padded prompt) and decode (one token per row) are one code path, `hidden_states(...,
cache=cache)`, which returns the updated cache with the hidden states."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from oq2vl_jax.models import layers
from oq2vl_jax.models.attention import attention
from oq2vl_jax.models.cache import KVCache, write_layer
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

    def __call__(self, x, cos, sin, segment_ids, cached=None):
        """cached: None (training: the queries are the keys) or (layer k cache, layer v cache, the cache's segment
        ids and positions after this call's tokens were recorded, this call's positions, write slot); then returns
        (x, (new k cache, new v cache))."""
        cfg = self.cfg
        b, t, _ = x.shape
        h = self.input_norm(x)
        q = layers.apply_rotary(self.q(h).reshape(b, t, cfg.num_heads, cfg.head_dim), cos, sin)
        k = layers.apply_rotary(self.k(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim), cos, sin)
        v = self.v(h).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        if cached is None:
            a = attention(q, k, v, segment_ids, causal=True, backend=self.backend,
                          splash_interpret=self.splash_interpret)
        else:
            cache_k, cache_v, kv_segment_ids, kv_positions, positions, end = cached
            cache_k, cache_v = write_layer(cache_k, cache_v, k, v, end)
            a = attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), segment_ids, causal=True,
                          kv_segment_ids=kv_segment_ids, q_positions=positions, kv_positions=kv_positions)
        a = checkpoint_name(a, "attention_out")
        x = x + self.o(a.reshape(b, t, -1))
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        h = self.post_attention_norm(x)
        x = x + self.down(jax.nn.silu(self.gate(h)) * self.up(h))
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        return x if cached is None else (x, (cache_k, cache_v))


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

    def hidden_states(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                      cache: KVCache | None = None):
        """x [B, L, D] input embeddings -> final-normed hidden states [B, L, D]; with a cache, (hidden states, the
        cache with these L tokens written at its `end` and `end` advanced by L)."""
        cos, sin = layers.rotary_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        graphdef, state = nnx.split(self.layers)
        if cache is not None:
            return self._hidden_states_cached(x, cos, sin, positions, segment_ids, cache, graphdef, state)

        def body(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids), None

        if self.opts.remat != "none":
            body = jax.checkpoint(body, policy=_REMAT[self.opts.remat], prevent_cse=False)
        x = layers.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
        x, _ = jax.lax.scan(body, x, state)
        return self.norm(x)

    def _hidden_states_cached(self, x, cos, sin, positions, segment_ids, cache: KVCache, graphdef, state):
        recorded = cache.with_tokens(segment_ids, positions)
        end = cache.end

        def body(h, xs):
            layer_state, cache_k, cache_v = xs
            cached = (cache_k, cache_v, recorded.segment_ids, recorded.positions, positions, end)
            return nnx.merge(graphdef, layer_state)(h, cos, sin, segment_ids, cached)

        x, (k, v) = jax.lax.scan(body, x, (state, cache.k, cache.v))
        return self.norm(x), dataclasses.replace(recorded, k=k, v=v).advance(x.shape[1])

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
