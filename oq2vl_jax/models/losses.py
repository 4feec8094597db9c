"""Cross-entropy over a large vocabulary in chunks of positions: each chunk's fp32 logits live only inside a
rematerialised scan step, so [tokens, vocab] fp32 logits are never held at once (151,936 x 4096 x 4 B = 2.5 GB per row
otherwise).

With rows ([B, L, D] hidden states) the scan walks each row's length, `chunk` positions of every row per step, so the
row axis, the one sharded over the batch mesh axes, stays sharded: every device computes only its own rows' logits and
nothing of vocabulary size crosses devices. (Scanning the flattened B x L axis instead makes every device walk every
global chunk and all-reduce [chunk, vocab] logits.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _logits_fn(eq: str):
    """fp32 logits of (hidden, kernel); the backward matmuls take the logits' gradient in the inputs' dtype.

    Left to autodiff, the fp32 cotangent promotes both backward matmuls ([tokens, vocab] x [vocab, D]) to fp32: on
    GPU and TPU several times slower than bf16 and the largest matmuls of the step. In float32 this is plain autodiff.
    """
    @jax.custom_vjp
    def logits(h, k):
        return jnp.einsum(eq, h, k, preferred_element_type=jnp.float32)

    def fwd(h, k):
        return logits(h, k), (h, k)

    def bwd(res, g):
        h, k = res
        _, vjp = jax.vjp(lambda h, k: jnp.einsum(eq, h, k), h, k)  # output (and cotangent) in h's dtype
        dh, dk = vjp(g.astype(h.dtype))
        return dh, dk.astype(k.dtype)

    logits.defvjp(fwd, bwd)
    return logits


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, layout: str, targets: jax.Array,
                          weights: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """hidden [..., N, D]; kernel [V, D] ("vd") or [D, V] ("dv"); targets [..., N] int; weights [..., N].

    Leading dimensions (rows) are kept; `chunk` positions along N per scan step. Returns (sum of weight * NLL, sum of
    weights), both float32 scalars.
    """
    *lead, n, d = hidden.shape
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:
        widths = [(0, 0)] * len(lead) + [(0, pad)]
        hidden = jnp.pad(hidden, widths + [(0, 0)])
        targets = jnp.pad(targets, widths)
        weights = jnp.pad(weights, widths)
    steps = (n + pad) // chunk
    kernel = kernel.astype(hidden.dtype)
    eq = "...d,vd->...v" if layout == "vd" else "...d,dv->...v"
    logits_of = _logits_fn(eq)

    @jax.checkpoint
    def chunk_loss(h, t, w):
        logits = logits_of(h, kernel)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        return jnp.sum((lse - picked) * w)

    def body(_, xs):  # no carry: inside shard_map a carry would have to be marked device-varying
        return None, chunk_loss(*xs)

    def by_step(x):  # [..., steps * chunk, *rest] -> [steps, ..., chunk, *rest]
        k = len(lead)
        x = x.reshape(*lead, steps, chunk, *x.shape[k + 1:])
        return jnp.moveaxis(x, k, 0)

    xs = (by_step(hidden), by_step(targets), by_step(weights.astype(jnp.float32)))
    _, per_chunk = jax.lax.scan(body, None, xs)
    return jnp.sum(per_chunk), jnp.sum(weights.astype(jnp.float32))
