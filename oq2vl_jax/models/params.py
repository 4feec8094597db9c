"""Moving parameter trees (nested dicts of arrays, as `nnx.state(model, nnx.Param).to_pure_dict()`) in and out of
models, with shape checks that name the offending parameter."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import ModelOptions, VLMConfig
from oq2vl_jax.models.vlm import VLM


def abstract_vlm(config: VLMConfig, options: ModelOptions = ModelOptions()) -> VLM:
    """A VLM whose parameters are ShapeDtypeStructs: nothing is allocated."""
    return nnx.eval_shape(lambda: VLM(config, options, rngs=nnx.Rngs(0)))


def param_tree(module: nnx.Module) -> dict:
    return nnx.state(module, nnx.Param).to_pure_dict()


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def check_tree_matches(tree: dict, expected: dict, what: str = "parameters") -> None:
    """Same names and shapes, else a UserError that names the first differences."""
    got, want = flatten(tree), flatten(expected)
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or unexpected:
        raise UserError(f"{what} do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name in sorted(want):
        if tuple(np.shape(got[name])) != tuple(want[name].shape):
            raise UserError(f"{what}: tensor '{name}' has shape {tuple(np.shape(got[name]))}, "
                            f"the model expects {tuple(want[name].shape)}")


def load_params(module: nnx.Module, tree: dict) -> nnx.Module:
    """Puts `tree` into `module` (in place; the module may be abstract) and returns it."""
    state = nnx.state(module, nnx.Param)
    check_tree_matches(tree, state.to_pure_dict())
    state.replace_by_pure_dict(jax.tree.map(lambda x: x, tree))
    nnx.update(module, state)
    return module


def vlm_from_params(config: VLMConfig, tree: dict, options: ModelOptions = ModelOptions()) -> VLM:
    return load_params(abstract_vlm(config, options), tree)


def path_str(path) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def logical_axes(module: nnx.Module) -> dict[str, tuple]:
    """'/'-joined parameter path -> logical axis names, one per dimension ("layers" first for stacked blocks)."""
    out = {}
    state = nnx.state(module, nnx.Param)
    for path, var in jax.tree_util.tree_leaves_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        axes = tuple(var.get_metadata()["logical_axes"])
        ndim = len(var.get_value().shape)
        if len(axes) == ndim - 1:  # stacked blocks: the leading dimension is the layer index
            axes = ("layers",) + axes
        if len(axes) != ndim:
            raise ValueError(f"parameter {path_str(path)} has logical axes {axes} for shape {var.get_value().shape}")
        out[path_str(path)] = axes
    return out
