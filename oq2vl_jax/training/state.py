"""The train state as pure pytrees, its shardings, and how it is built.

The model is split once, outside the step, into a graph definition (static; carries ModelOptions) and a parameter tree
(nested dicts of arrays, the `checkpoint_io` layout). Inside the jitted step the two are merged again, so no Python
graph traversal runs per step.

Stages (docs/reference_notes.md §4) decide which top-level towers train:
  align     projector                    pretrain  projector + llm          full  vision + projector + llm
Trained towers keep fp32 master weights and optimizer state; frozen towers have neither gradients nor optimizer
state and are stored in `frozen_dtype` (bf16: the reference casts its frozen vision tower to bf16).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from jax.sharding import Mesh

from oq2vl_jax import parallel
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import params as params_lib
from oq2vl_jax.models.params import path_str
from oq2vl_jax.models.presets import ModelOptions, VLMConfig
from oq2vl_jax.models.vlm import VLM

STAGES = {"align": ("projector",), "pretrain": ("projector", "llm"), "full": ("vision", "projector", "llm")}
TOWERS = ("vision", "projector", "llm")
MASTER_DTYPE = jnp.float32


@struct.dataclass
class TrainState:
    step: jax.Array              # int32 scalar: batches consumed = updates attempted
    trainable: dict              # fp32 master weights of the trained towers
    frozen: dict                 # the other towers, in frozen_dtype (possibly empty)
    opt_state: Any
    nonfinite_in_row: jax.Array  # int32: consecutive steps skipped for a non-finite loss or gradient
    nonfinite_total: jax.Array   # int32


def check_stage(stage: str) -> tuple[str, ...]:
    if stage not in STAGES:
        raise UserError(f"train.stage must be one of {sorted(STAGES)}, got '{stage}'")
    return STAGES[stage]


def split_params(params: Mapping, stage: str) -> tuple[dict, dict]:
    trained = check_stage(stage)
    return ({k: v for k, v in params.items() if k in trained}, {k: v for k, v in params.items() if k not in trained})


def merge_params(trainable: Mapping, frozen: Mapping) -> dict:
    return {k: (trainable[k] if k in trainable else frozen[k]) for k in TOWERS}


class ModelParts:
    """The static half of the model (graphdef), abstract parameters and their logical axes (by '/'-joined path)."""

    def __init__(self, config: VLMConfig, options: ModelOptions):
        self.config, self.options = config, options
        abstract = nnx.eval_shape(lambda: VLM(config, options, rngs=nnx.Rngs(0)))
        self.graphdef, state = nnx.split(abstract, nnx.Param)
        self.logical_axes: dict[str, tuple] = params_lib.logical_axes(abstract)
        self.abstract_params: dict = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                                                  state.to_pure_dict())

    def model(self, params: Mapping) -> VLM:
        """Rebuilds the module from a parameter tree (cheap; used inside jitted functions)."""
        return nnx.merge(self.graphdef, nnx.State(dict(params)))

    def map_params(self, fn: Callable[[str, Any], Any], tree: Mapping) -> dict:
        return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), dict(tree))

    def shardings(self, tree: Mapping, mesh: Mesh) -> dict:
        """NamedSharding per leaf of a parameter(-shaped) tree, from the logical axes and the rules table."""
        return self.map_params(lambda p, x: parallel.named_sharding(mesh, self.logical_axes[p], x.shape), tree)

    def decay_mask(self, tree: Mapping) -> dict:
        from oq2vl_jax.training.optimizer import decays
        return self.map_params(lambda p, x: decays(p, self.logical_axes[p]), tree)

    def random_params(self, seed: int, mesh: Mesh, compiler_options: Mapping[str, Any] | None = None) -> dict:
        """Random initialisation (demo, tests), created directly with its shardings."""
        out = self.shardings(self.abstract_params, mesh)
        init = jax.jit(lambda: nnx.state(VLM(self.config, self.options, rngs=nnx.Rngs(seed)), nnx.Param)
                       .to_pure_dict(), out_shardings=out, compiler_options=compiler_options)
        return init()


def stored_dtype(stage: str, frozen_dtype: str) -> Callable[[str], Any]:
    trained = check_stage(stage)
    return lambda path: MASTER_DTYPE if path.split("/", 1)[0] in trained else jnp.dtype(frozen_dtype)


def _opt_shardings(tx: optax.GradientTransformation, abstract_opt, trainable_shardings, mesh: Mesh):
    return optax.tree_map_params(tx, lambda _, s: s, abstract_opt, trainable_shardings,
                                 transform_non_params=lambda _: parallel.replicated(mesh))


def abstract_state(parts: ModelParts, stage: str, frozen_dtype: str, tx: optax.GradientTransformation,
                   mesh: Mesh) -> tuple[TrainState, TrainState]:
    """(abstract TrainState of ShapeDtypeStructs carrying shardings, TrainState of shardings). Allocates nothing."""
    dtype_of = stored_dtype(stage, frozen_dtype)
    params = parts.map_params(lambda p, x: jax.ShapeDtypeStruct(x.shape, dtype_of(p)), parts.abstract_params)
    trainable, frozen = split_params(params, stage)
    shard = parts.shardings(params, mesh)
    t_shard, f_shard = split_params(shard, stage)
    abstract_opt = jax.eval_shape(tx.init, trainable)
    rep = parallel.replicated(mesh)
    shardings = TrainState(step=rep, trainable=t_shard, frozen=f_shard,
                           opt_state=_opt_shardings(tx, abstract_opt, t_shard, mesh),
                           nonfinite_in_row=rep, nonfinite_total=rep)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    shapes = TrainState(step=scalar, trainable=trainable, frozen=frozen, opt_state=abstract_opt,
                        nonfinite_in_row=scalar, nonfinite_total=scalar)
    with_shardings = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return with_shardings, shardings


def init_state(params: Mapping, parts: ModelParts, stage: str, frozen_dtype: str,
               tx: optax.GradientTransformation, mesh: Mesh,
               compiler_options: Mapping[str, Any] | None = None) -> TrainState:
    """A fresh TrainState (step 0) from a full parameter tree (numpy or jax arrays, any dtype)."""
    from oq2vl_jax.models.params import check_tree_matches

    check_tree_matches(params, parts.abstract_params)
    abstract, shardings = abstract_state(parts, stage, frozen_dtype, tx, mesh)
    dtype_of = stored_dtype(stage, frozen_dtype)
    full_shardings = merge_params(shardings.trainable, shardings.frozen)
    dtypes = parts.map_params(lambda p, x: dtype_of(p), parts.abstract_params)
    # host arrays are cast on the host; device arrays (random init) in one jitted cast, not one compile per shape
    on_device = lambda x: isinstance(x, jax.Array)  # noqa: E731
    placed = jax.tree.map(lambda x, d, s: x if on_device(x) else jax.device_put(np.asarray(x).astype(d), s),
                          dict(params), dtypes, full_shardings)
    if any(on_device(x) for x in jax.tree.leaves(params)):
        cast = jax.jit(lambda tree: jax.tree.map(lambda x, d: x.astype(d), tree, dtypes),
                       out_shardings=full_shardings, compiler_options=compiler_options)
        placed = cast(placed)
    trainable, frozen = split_params(placed, stage)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state, compiler_options=compiler_options)(trainable)
    zero = lambda: jax.device_put(jnp.zeros((), jnp.int32), shardings.step)  # noqa: E731 (3 distinct buffers)
    return TrainState(step=zero(), trainable=trainable, frozen=frozen, opt_state=opt_state,
                      nonfinite_in_row=zero(), nonfinite_total=zero())
