"""One attention entry point with backends, all segment-aware.

  xla     dense boolean mask from segment ids (+ causal); the reference and the CPU path.
  cudnn   GPU: `jax.nn.dot_product_attention(implementation="cudnn")` with the same dense segment mask and
          `is_causal` (docs/reference_notes.md §11: 2.1 ms fwd+bwd vs 11.3 ms for xla on an H100 at 4096 tokens).
  cudnn_packed  GPU, opt-in: cuDNN's packed-sequence path (per-document lengths and offsets, causal) through JAX's
          private `fused_attention_stablehlo.dot_product_attention`; rows with more than MAX_PACKED_SEGMENTS documents
          fall back to `cudnn` inside the step (`lax.cond`). Checked against xla by benchmarks/gpu_check.py.
  splash  TPU: Pallas splash attention with `SegmentIds`, under `shard_map` over the batch (and head) mesh axes.
  auto    cudnn on GPU, splash on TPU, xla elsewhere.

Shapes: q [B, T, H, D], k and v [B, S, K, D] with H a multiple of K (grouped-query attention).
segment_ids [B, T] (self-attention; 0 = padding) or None for unmasked (non-causal vision) attention.
Padding queries attend to padding keys only, so no row is fully masked and outputs stay finite.

Keys that are not the queries (a KV cache: S cache slots, T new tokens) are described separately: pass
`kv_segment_ids` [B, S] and `q_positions` [B, T] / `kv_positions` [B, S]. A query then sees a key when both are in
the same document, the key's position is <= the query's, and the key is not padding (segment 0). This general mask
always runs on the xla path (prefill and decode are memory-bound; the fused kernels assume T == S); training, where
queries are the keys, keeps its backend.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BATCH_MESH_AXES = ("data", "fsdp")
SPLASH_ALIGN = 128  # splash block sizes are multiples of 128 tokens
MAX_PACKED_SEGMENTS = 64  # documents per row the cudnn_packed path describes; 4096 / (144 + 3) = 27 caption docs
HEAD_MESH_AXIS = "tensor"


def resolve_backend(backend: str, platform: str | None = None) -> str:
    """"auto" -> the backend for `platform` (the devices the step runs on; default: jax's default backend)."""
    if backend != "auto":
        return backend
    platform = platform or jax.default_backend()
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")


def segment_mask(segment_ids: jax.Array | None, length: int, causal: bool) -> jax.Array | None:
    """Boolean [B or 1, 1, T, T]: same document (and causal)."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    if causal:
        tri = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))[None, None]
        mask = tri if mask is None else mask & tri
    return mask


def cache_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, q_positions: jax.Array,
               kv_positions: jax.Array) -> jax.Array:
    """Boolean [B, 1, T, S]: same document, key position <= query position, key not padding."""
    same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    causal = kv_positions[:, None, :] <= q_positions[:, :, None]
    return (same & causal & (kv_segment_ids > 0)[:, None, :])[:, None]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *, causal: bool,
              backend: str = "auto", splash_interpret: bool = False, kv_segment_ids: jax.Array | None = None,
              q_positions: jax.Array | None = None, kv_positions: jax.Array | None = None) -> jax.Array:
    if kv_segment_ids is not None:  # keys are not the queries: a KV cache
        if segment_ids is None or q_positions is None or kv_positions is None:
            raise ValueError("cached attention needs query and key segment ids and positions")
        mask = cache_mask(segment_ids, kv_segment_ids, q_positions, kv_positions)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    backend = resolve_backend(backend)
    if backend == "xla":
        mask = segment_mask(segment_ids, q.shape[1], causal)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")
    if backend == "cudnn":
        mask = segment_mask(segment_ids, q.shape[1], causal=False)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal, implementation="cudnn")
    if backend == "cudnn_packed":
        return _cudnn_packed(q, k, v, segment_ids, causal=causal)
    if backend == "splash":
        return _splash(q, k, v, segment_ids, causal=causal, interpret=splash_interpret)
    raise ValueError(f"unknown attention backend {backend!r}; use auto, xla, cudnn, cudnn_packed or splash")


def packed_lengths_and_offsets(segment_ids: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """Contiguous documents 1..n (then padding) -> cuDNN's per-row segment lengths [B, S] and start offsets
    [B, S + 1], unused entries -1."""
    ids = jnp.arange(1, max_segments + 1, dtype=segment_ids.dtype)
    lengths = jnp.sum(segment_ids[:, :, None] == ids, axis=1).astype(jnp.int32)
    starts = jnp.cumsum(lengths, axis=1) - lengths
    present = lengths > 0
    lengths = jnp.where(present, lengths, -1)
    offsets = jnp.concatenate([jnp.where(present, starts, -1), jnp.full_like(starts[:, :1], -1)], axis=1)
    return lengths, offsets


def _cudnn_packed(q, k, v, segment_ids, *, causal: bool):
    from jax._src.cudnn import fused_attention_stablehlo as cudnn  # private: guarded by the GPU check script

    if segment_ids is None:
        return attention(q, k, v, None, causal=causal, backend="cudnn")
    lengths, offsets = packed_lengths_and_offsets(segment_ids, MAX_PACKED_SEGMENTS)
    mask_type = cudnn.MaskType.CAUSAL if causal else cudnn.MaskType.NO_MASK

    def packed(q, k, v):
        out = cudnn.dot_product_attention(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets,
                                          kv_offsets=offsets, scale=q.shape[-1] ** -0.5, mask_type=mask_type)
        return jnp.where((segment_ids > 0)[:, :, None, None], out, 0).astype(q.dtype)

    def masked(q, k, v):
        return attention(q, k, v, segment_ids, causal=causal, backend="cudnn")

    fits = jnp.max(segment_ids) <= MAX_PACKED_SEGMENTS
    return jax.lax.cond(fits, packed, masked, q, k, v)


def _splash(q, k, v, segment_ids, *, causal: bool, interpret: bool):
    b, t, h, d = q.shape
    groups = h // k.shape[2]
    if groups > 1:  # splash MHA wants one KV head per query head
        k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    if segment_ids is None:
        segment_ids = jnp.ones((b, t), jnp.int32)
    pad = (-t) % SPLASH_ALIGN  # e.g. SigLIP's 729 patches: the kernel wants whole blocks; pad as its own segment
    if pad:
        widths = ((0, 0), (0, pad), (0, 0), (0, 0))
        q, k, v = jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths)
        segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=-1)
    out = _splash_call(q * (d ** -0.5), k, v, segment_ids, causal=causal, interpret=interpret)  # splash does not scale
    return out[:, :t]


def _splash_call(q, k, v, segment_ids, *, causal: bool, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    t, h = q.shape[1], q.shape[2]
    mesh = jax.sharding.get_abstract_mesh()
    names = () if mesh is None or mesh.empty else mesh.axis_names
    batch_axes = tuple(a for a in BATCH_MESH_AXES if a in names and mesh.shape[a] > 1)
    head_axis = HEAD_MESH_AXIS if HEAD_MESH_AXIS in names and mesh.shape[HEAD_MESH_AXIS] > 1 else None
    local_heads = h // (mesh.shape[head_axis] if head_axis else 1)
    base = sm.CausalMask((t, t)) if causal else sm.FullMask((t, t))
    block = next(size for size in (512, 256, SPLASH_ALIGN) if t % size == 0)
    kernel = sk.make_splash_mha(
        sm.MultiHeadMask([base] * local_heads), head_shards=1, q_seq_shards=1, interpret=interpret,
        block_sizes=sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                                  block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block))

    def local(q, k, v, seg):
        def one(q, k, v, seg):  # [T, H, D] -> kernel layout [H, T, D]
            out = kernel(q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), segment_ids=sk.SegmentIds(seg, seg))
            return out.swapaxes(0, 1)
        return jax.vmap(one)(q, k, v, seg)

    if not batch_axes and head_axis is None:
        return local(q, k, v, segment_ids)
    bspec = batch_axes if batch_axes else None
    qkv_spec = P(bspec, None, head_axis, None)
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(bspec, None)),
                         out_specs=qkv_spec, check_vma=False)(q, k, v, segment_ids)
