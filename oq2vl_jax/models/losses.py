"""Cross-entropy over a large vocabulary in token chunks: each chunk's fp32 logits live only inside a rematerialised
scan step, so [tokens, vocab] fp32 logits are never held at once (151,936 x 4096 x 4 B = 2.5 GB per row otherwise)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def chunked_cross_entropy(hidden: jax.Array, kernel: jax.Array, layout: str, targets: jax.Array,
                          weights: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
    """hidden [N, D]; kernel [V, D] ("vd") or [D, V] ("dv"); targets [N] int; weights [N].

    Returns (sum of weight * NLL, sum of weights), both float32 scalars.
    """
    n, d = hidden.shape
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:
        hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
        weights = jnp.pad(weights, (0, pad))
    steps = (n + pad) // chunk
    kernel = kernel.astype(hidden.dtype)
    eq = "nd,vd->nv" if layout == "vd" else "nd,dv->nv"

    @jax.checkpoint
    def chunk_loss(h, t, w):
        logits = jnp.einsum(eq, h, kernel, preferred_element_type=jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        picked = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        return jnp.sum((lse - picked) * w)

    def body(total, xs):
        return total + chunk_loss(*xs), None

    xs = (hidden.reshape(steps, chunk, d), targets.reshape(steps, chunk), weights.astype(jnp.float32).reshape(steps, chunk))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, jnp.sum(weights.astype(jnp.float32))
