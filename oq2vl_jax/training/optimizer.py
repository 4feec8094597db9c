"""AdamW with the paper's recipe (docs/reference_notes.md §7): betas (0.9, 0.999), eps 1e-8, decoupled weight decay on
weights with >= 2 logical dimensions that are not biases (norm scales and biases get none), global-norm clipping,
linear warmup over W = int(warmup_ratio * T) updates then cosine to zero.

Learning rate of update k (0-based, T updates in all, peak lr p):

    k <  W:   lr_k = p * (k + 1) / W
    k >= W:   lr_k = p * 0.5 * (1 + cos(pi * (k - W + 1) / (T - W + 1)))

This is the reference's multiplier curve (HF `get_cosine_schedule_with_warmup`) with its two zero-lr updates removed:
the reference's first update has lr 0 (docs/reference_notes.md §10 Q3) and, without warmup, its last update is near 0
too.
Here the warmup reaches p exactly on update W-1, the cosine starts one sample below p on update W and ends one
sample above 0 on update T-1, so every update moves the weights. With W = 0 the run starts at ~p.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from oq2vl_jax.errors import UserError


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(warmup_ratio * total_steps)


def lr_schedule(peak_lr: float, total_steps: int, warmup_ratio: float) -> Callable[[jax.Array], jax.Array]:
    if total_steps < 1:
        raise UserError(f"train.num_steps must be >= 1, got {total_steps}")
    w = warmup_steps(total_steps, warmup_ratio)
    decay_span = total_steps - w + 1

    def schedule(count):
        k = jnp.asarray(count, jnp.float32)
        warm = peak_lr * (k + 1.0) / max(w, 1)
        cosine = peak_lr * 0.5 * (1.0 + jnp.cos(math.pi * jnp.clip(k - w + 1.0, 0.0, decay_span) / decay_span))
        return jnp.where(k < w, warm, cosine)

    return schedule


def decays(path: str, logical_axes: tuple) -> bool:
    """Decay applies to matrices (>= 2 logical dims, the stacked 'layers' dim not counted) that are not biases."""
    dims = [a for a in logical_axes if a != "layers"]
    return len(dims) >= 2 and path.rsplit("/", 1)[-1] != "bias"


def make_optimizer(optim_cfg: Mapping, total_steps: int, decay_mask) -> optax.GradientTransformation:
    """optim_cfg: lr, weight_decay, b1, b2, eps, warmup_ratio, clip_norm. decay_mask: bool pytree like the params."""
    schedule = lr_schedule(float(optim_cfg["lr"]), total_steps, float(optim_cfg["warmup_ratio"]))
    parts = []
    if optim_cfg["clip_norm"] and optim_cfg["clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg["clip_norm"])))
    parts.append(optax.adamw(schedule, b1=float(optim_cfg["b1"]), b2=float(optim_cfg["b2"]),
                             eps=float(optim_cfg["eps"]), weight_decay=float(optim_cfg["weight_decay"]),
                             mask=decay_mask))
    return optax.chain(*parts)


def current_lr(optim_cfg: Mapping, total_steps: int, update_count: jax.Array) -> jax.Array:
    """The lr the next update uses (for metrics)."""
    return lr_schedule(float(optim_cfg["lr"]), total_steps, float(optim_cfg["warmup_ratio"]))(update_count)


def update_count(opt_state) -> jax.Array:
    """How many updates the optimizer has applied (the adam count; skipped non-finite steps do not count)."""
    counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
              if isinstance(s, optax.ScaleByAdamState)]
    if len(counts) != 1:
        raise ValueError("optimizer state holds no single ScaleByAdamState")
    return counts[0]
