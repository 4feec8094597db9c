"""The jitted train and eval steps.

A step takes the global batch of one optimizer update ([rows, ...] per `batch.py`), splits it into `micro_batches`
micro-batches (row r goes to micro-batch r % micro_batches, so every device holds an equal share of each), and
accumulates gradients with `lax.scan`:

  token-weighted (default):  loss = sum of weighted NLL over all micro-batches / sum of weights; the gradient is that
                             of the same ratio, so accumulation over A micro-batches equals one A-times-larger batch.
  reference_compat:          loss = mean over micro-batches of (micro-batch NLL sum / its weight sum), the
                             reference's mean of per-micro-batch means (docs/reference_notes.md §10 Q4).

Gradient norm is measured before clipping. A non-finite loss or gradient norm skips the update inside the step
(`lax.cond`: parameters and optimizer state unchanged) and is counted in the state.

Besides the loss, the step returns the counts the FLOP formula needs (training/flops.py), summed over the global batch
on device so that every process sees the global numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from oq2vl_jax import parallel
from oq2vl_jax.batch import LOSS_FIELDS, MODEL_FIELDS
from oq2vl_jax.models import layers
from oq2vl_jax.training.optimizer import update_count
from oq2vl_jax.training.state import ModelParts, TrainState, merge_params

TRAIN_FIELDS = {**MODEL_FIELDS, **LOSS_FIELDS}
REPLICATED_TRAINED = ("projector",)  # trained towers small enough to hold whole on every device
REPLICATED_FROZEN = ("vision",)      # frozen towers used inside the image-chunk loop: gathered once, outside it


def batch_shardings(mesh: Mesh, fields: Mapping = TRAIN_FIELDS) -> dict:
    return {name: parallel.batch_sharding(mesh, rank) for name, (_, rank) in fields.items()}


def flop_counts(batch: Mapping[str, jax.Array], reference_compat: bool) -> dict[str, jax.Array]:
    """Global counts over a batch (float32; exact below 2^24, relative error ~1e-7 above).

    causal_pairs: (query, key) pairs the causal attention computes on real tokens, i.e. sum over documents of
    n(n+1)/2 = sum over real tokens of (position in document + 1). With reference_compat a row is one document.
    """
    real = batch["segment_ids"] > 0
    if reference_compat:
        index = jnp.cumsum(real, axis=1) - 1
    else:
        index = batch["positions"]
    f32 = jnp.float32
    return {
        "real_tokens": jnp.sum(real, dtype=f32),
        "capacity_tokens": jnp.asarray(real.size, f32),
        "causal_pairs": jnp.sum(jnp.where(real, index + 1, 0), dtype=f32),
        "num_images": jnp.sum(batch["image_valid"], dtype=f32),
        "target_tokens": jnp.sum(batch["loss_weights"], dtype=f32),
    }


def _micro_batches(batch: Mapping[str, jax.Array], count: int) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...] with micro-batch m = rows m, m + count, m + 2 count, ..."""
    def split(x):
        rows = x.shape[0]
        return x.reshape(rows // count, count, *x.shape[1:]).swapaxes(0, 1)
    return {k: split(v) for k, v in batch.items()}


def compute_copy(params: Mapping, shardings: Mapping, dtype, replicate=(), mesh: Mesh | None = None) -> dict:
    """The parameters as the model uses them: matrices cast to the compute dtype while still sharded (so FSDP gathers
    them, and reduce-scatters their gradients, in that dtype: the cast's transpose casts the gradient back), pinned to
    their stored sharding (the gradient then leaves each micro-batch reduce-scattered, not all-reduced).

    Towers in `replicate` are gathered here, once per micro-batch, instead of inside the loops that use them (the
    vision tower and the projector run in a loop over image chunks). Values are unchanged: the model casts
    to the compute dtype anyway; vectors (norms, biases) keep their dtype."""
    def one(x, sharding, gather):
        x = x.astype(dtype) if x.ndim >= 2 and jnp.issubdtype(x.dtype, jnp.floating) else x
        x = jax.lax.with_sharding_constraint(x, sharding)
        return jax.lax.with_sharding_constraint(x, parallel.replicated(mesh)) if gather else x
    return {name: jax.tree.map(lambda x, s: one(x, s, name in replicate), tree, shardings[name])
            for name, tree in params.items()}


def make_train_step(parts: ModelParts, tx: optax.GradientTransformation, mesh: Mesh, *, micro_batches: int,
                    lr_fn: Callable[[jax.Array], jax.Array], state_shardings: TrainState,
                    compiler_options: Mapping[str, Any] | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The jitted step: (state, global batch) -> (new state, metrics of replicated scalars). Donates the state.
    compiler_options: XLA options for this jit (tests pass a fast-compile level)."""
    compat = parts.options.reference_compat
    act = parallel.activation_sharding_fn(mesh)
    micro_shardings = batch_shardings(mesh)
    compute = jnp.dtype(parts.options.compute_dtype)

    def objective(trainable, frozen, micro):
        # the projector (4.5M parameters) runs inside the vision chunk loop: gathered whole there, GSPMD would gather
        # the image activations instead to compute its sharded weight gradient
        trainable = compute_copy(trainable, state_shardings.trainable, compute, replicate=REPLICATED_TRAINED, mesh=mesh)
        frozen = compute_copy(frozen, state_shardings.frozen, compute, replicate=REPLICATED_FROZEN, mesh=mesh)
        nll, weight = parts.model(merge_params(trainable, frozen)).loss(micro)
        scaled = nll / jnp.maximum(weight, 1.0) / micro_batches if compat else nll
        return scaled, (nll, weight)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def accumulate(trainable, frozen, batch):
        def body(carry, micro):
            grads, nll_sum, weight_sum, mean_sum = carry
            micro = {k: jax.lax.with_sharding_constraint(v, micro_shardings[k]) for k, v in micro.items()}
            (_, (nll, weight)), g = grad_fn(trainable, frozen, micro)
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, nll_sum + nll, weight_sum + weight, mean_sum + nll / jnp.maximum(weight, 1.0)), None

        zeros = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, trainable),
                                                 state_shardings.trainable)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
        (grads, nll, weight, mean_sum), _ = jax.lax.scan(body, init, _micro_batches(batch, micro_batches))
        if compat:
            return grads, mean_sum / micro_batches, weight
        denom = jnp.maximum(weight, 1.0)
        return jax.tree.map(lambda g: g / denom, grads), nll / denom, weight

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        with layers.activation_sharding(act):
            grads, loss, weight = accumulate(state.trainable, state.frozen, batch)
        grad_norm = optax.global_norm(grads)
        lr = lr_fn(update_count(state.opt_state))
        updates, new_opt_state = tx.update(grads, state.opt_state, state.trainable)
        # the update itself too: a non-finite learning rate or optimizer statistic turns finite gradients into NaN
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.global_norm(updates))

        def apply(_):
            return optax.apply_updates(state.trainable, updates), new_opt_state

        trainable, opt_state = jax.lax.cond(finite, apply, lambda _: (state.trainable, state.opt_state), None)
        skipped = (~finite).astype(jnp.int32)
        new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state,
                                  nonfinite_in_row=jnp.where(finite, 0, state.nonfinite_in_row + 1),
                                  nonfinite_total=state.nonfinite_total + skipped)
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped_nonfinite": skipped,
                   "nonfinite_in_row": new_state.nonfinite_in_row, "nonfinite_total": new_state.nonfinite_total,
                   **flop_counts(batch, compat)}
        return new_state, metrics

    rep = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(state_shardings, batch_shardings(mesh)), out_shardings=(state_shardings, rep),
                   donate_argnums=0, compiler_options=compiler_options)


def make_eval_step(parts: ModelParts, mesh: Mesh, state_shardings: TrainState,
                   compiler_options: Mapping[str, Any] | None = None):
    """Jitted (state, batch) -> (sum of weighted NLL, sum of weights), replicated; the state is not donated."""
    act = parallel.activation_sharding_fn(mesh)

    def evaluate(state: TrainState, batch: dict):
        with layers.activation_sharding(act):
            return parts.model(merge_params(state.trainable, state.frozen)).loss(batch)

    rep = parallel.replicated(mesh)
    return jax.jit(evaluate, in_shardings=(state_shardings, batch_shardings(mesh)), out_shardings=(rep, rep),
                   compiler_options=compiler_options)
