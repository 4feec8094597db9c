"""The decoder's KV cache: one pytree for all layers, with logical axes for sharding.

  k, v          [layers, B, S, kv_heads, head_dim]   keys (after RoPE) and values, in the compute dtype
  segment_ids   [B, S] int32   document of each slot; 0 = empty or padding (never attended to)
  positions     [B, S] int32   RoPE position of each slot (what the causal rule compares)
  end           []     int32   next slot to write; the same for every row

Every call writes its T new tokens into slots [end, end + T) of every row and attends over all S slots with the
cache mask of `attention.cache_mask` (same document, key position <= query position, key not padding). Prefill and
decode are the same call: a right-padded prompt batch of T tokens (padding has segment 0), then T = 1 per step, each
row at its own position. Slot order therefore does not need to match position order, and ragged prompts need no
per-row write offsets (one `dynamic_update_slice` for the whole batch). S = prompt bucket + new-token budget.

`LOGICAL_AXES` names each dimension; `oq2vl_jax.parallel`'s rules table maps them to mesh axes (rows over the data
axes, KV heads over `tensor`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from oq2vl_jax.models.presets import Qwen2Config

LOGICAL_AXES = {
    "k": ("layers", "cache_batch", "cache_length", "kv_heads", "head_dim"),
    "v": ("layers", "cache_batch", "cache_length", "kv_heads", "head_dim"),
    "segment_ids": ("cache_batch", "cache_length"),
    "positions": ("cache_batch", "cache_length"),
    "end": (),
}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    positions: jax.Array
    end: jax.Array

    @classmethod
    def zeros(cls, cfg: Qwen2Config, batch: int, length: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   segment_ids=jnp.zeros((batch, length), jnp.int32), positions=jnp.zeros((batch, length), jnp.int32),
                   end=jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.segment_ids.shape[1]

    def logical_axes(self) -> "KVCache":
        """The same pytree with a tuple of logical axis names in place of each array."""
        return KVCache(**LOGICAL_AXES)

    def with_tokens(self, segment_ids: jax.Array, positions: jax.Array) -> "KVCache":
        """Records the T new tokens' segments [B, T] and positions [B, T] at `end`; k/v are written per layer with
        `write_layer`, and `end` advances with `advance`."""
        return dataclasses.replace(
            self, segment_ids=jax.lax.dynamic_update_slice(self.segment_ids, segment_ids.astype(jnp.int32),
                                                           (0, self.end)),
            positions=jax.lax.dynamic_update_slice(self.positions, positions.astype(jnp.int32), (0, self.end)))

    def advance(self, count: int) -> "KVCache":
        return dataclasses.replace(self, end=self.end + count)


def write_layer(cache_k: jax.Array, cache_v: jax.Array, k: jax.Array, v: jax.Array, end: jax.Array):
    """One layer's [B, S, K, D] caches with the new [B, T, K, D] keys and values written at slot `end`."""
    start = (0, end, 0, 0)
    return (jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start),
            jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start))
