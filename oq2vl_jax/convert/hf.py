"""Hugging Face transformers naming <-> oq2vl_jax parameter trees, for Qwen2 (`Qwen2ForCausalLM`) and SigLIP
(`SiglipVisionModel` / the vision half of `SiglipModel`).

Our trees are nested dicts of numpy arrays shaped like `nnx.state(model, nnx.Param).to_pure_dict()`; stacked blocks
carry a leading layer axis. HF `Linear` weights are [out, in]; ours are [in, out]. Only transposes, reshapes and
stacking happen here, so conversions are bit-exact both ways.

Readers take `get(name) -> np.ndarray` so tensors are read lazily one at a time (safetensors memory-mapped).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import Qwen2Config, SiglipConfig

Getter = Callable[[str], np.ndarray]

# (our name inside a decoder layer, HF name inside `model.layers.{i}.`, is a Linear weight that needs transposing)
QWEN2_LAYER = (
    ("input_norm/scale", "input_layernorm.weight", False),
    ("q/kernel", "self_attn.q_proj.weight", True),
    ("q/bias", "self_attn.q_proj.bias", False),
    ("k/kernel", "self_attn.k_proj.weight", True),
    ("k/bias", "self_attn.k_proj.bias", False),
    ("v/kernel", "self_attn.v_proj.weight", True),
    ("v/bias", "self_attn.v_proj.bias", False),
    ("o/kernel", "self_attn.o_proj.weight", True),
    ("post_attention_norm/scale", "post_attention_layernorm.weight", False),
    ("gate/kernel", "mlp.gate_proj.weight", True),
    ("up/kernel", "mlp.up_proj.weight", True),
    ("down/kernel", "mlp.down_proj.weight", True),
)

SIGLIP_BLOCK = (
    ("norm1/scale", "layer_norm1.weight", False),
    ("norm1/bias", "layer_norm1.bias", False),
    ("q/kernel", "self_attn.q_proj.weight", True),
    ("q/bias", "self_attn.q_proj.bias", False),
    ("k/kernel", "self_attn.k_proj.weight", True),
    ("k/bias", "self_attn.k_proj.bias", False),
    ("v/kernel", "self_attn.v_proj.weight", True),
    ("v/bias", "self_attn.v_proj.bias", False),
    ("out/kernel", "self_attn.out_proj.weight", True),
    ("out/bias", "self_attn.out_proj.bias", False),
    ("norm2/scale", "layer_norm2.weight", False),
    ("norm2/bias", "layer_norm2.bias", False),
    ("fc1/kernel", "mlp.fc1.weight", True),
    ("fc1/bias", "mlp.fc1.bias", False),
    ("fc2/kernel", "mlp.fc2.weight", True),
    ("fc2/bias", "mlp.fc2.bias", False),
)


def set_path(tree: dict, path: str, value) -> None:
    keys = path.split("/")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def get_path(tree: dict, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return tree


def check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if tuple(array.shape) != tuple(expected):
        raise UserError(f"tensor '{name}' has shape {tuple(array.shape)} but the model config expects {tuple(expected)}")
    return array


def _stack_layers(get: Getter, table, prefix: str, count: int) -> dict:
    out: dict = {}
    for ours, theirs, transpose in table:
        arrays = []
        for i in range(count):
            a = np.asarray(get(f"{prefix}{i}.{theirs}"))
            arrays.append(a.T if transpose else a)
        set_path(out, ours, np.stack(arrays))
    return out


def _unstack_layers(tree: dict, table, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    for ours, theirs, transpose in table:
        stacked = np.asarray(get_path(tree, ours))
        for i in range(stacked.shape[0]):
            a = stacked[i]
            yield f"{prefix}{i}.{theirs}", np.ascontiguousarray(a.T if transpose else a)


def qwen2_expected_shapes(cfg: Qwen2Config) -> dict[str, tuple[int, ...]]:
    d, qd, kvd, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    return {"input_norm/scale": (d,), "q/kernel": (d, qd), "q/bias": (qd,), "k/kernel": (d, kvd), "k/bias": (kvd,),
            "v/kernel": (d, kvd), "v/bias": (kvd,), "o/kernel": (qd, d), "post_attention_norm/scale": (d,),
            "gate/kernel": (d, f), "up/kernel": (d, f), "down/kernel": (f, d)}


def qwen2_from_hf(get: Getter, cfg: Qwen2Config, prefix: str = "model.", lm_head: str = "lm_head.weight") -> dict:
    """HF Qwen2ForCausalLM tensors -> our `llm` subtree."""
    shapes = qwen2_expected_shapes(cfg)
    checked = lambda name: _checked_layer_getter(get, name, shapes, QWEN2_LAYER, prefix + "layers.")
    tree = {
        "embed": check_shape(prefix + "embed_tokens.weight", np.asarray(get(prefix + "embed_tokens.weight")),
                             (cfg.vocab_size, cfg.hidden_size)),
        "layers": _stack_layers(checked, QWEN2_LAYER, prefix + "layers.", cfg.num_layers),
        "norm": {"scale": check_shape(prefix + "norm.weight", np.asarray(get(prefix + "norm.weight")),
                                      (cfg.hidden_size,))},
    }
    if not cfg.tie_word_embeddings:
        head = check_shape(lm_head, np.asarray(get(lm_head)), (cfg.vocab_size, cfg.hidden_size))
        tree["lm_head"] = {"kernel": np.ascontiguousarray(head.T)}
    return tree


def qwen2_to_hf(tree: dict, cfg: Qwen2Config, prefix: str = "model.", lm_head: str | None = "lm_head.weight",
                ) -> Iterator[tuple[str, np.ndarray]]:
    """Our `llm` subtree -> HF tensors. With tied embeddings `lm_head` (if a name is given) repeats embed_tokens."""
    yield prefix + "embed_tokens.weight", np.asarray(tree["embed"])
    yield from _unstack_layers(tree["layers"], QWEN2_LAYER, prefix + "layers.")
    yield prefix + "norm.weight", np.asarray(tree["norm"]["scale"])
    if lm_head is not None:
        if cfg.tie_word_embeddings:
            yield lm_head, np.asarray(tree["embed"])
        else:
            yield lm_head, np.ascontiguousarray(np.asarray(tree["lm_head"]["kernel"]).T)


def siglip_expected_shapes(cfg: SiglipConfig) -> dict[str, tuple[int, ...]]:
    d, f = cfg.width, cfg.mlp_dim
    shapes = {name: (d,) for name, _, _ in SIGLIP_BLOCK if not name.endswith("kernel")}
    shapes.update({"q/kernel": (d, d), "k/kernel": (d, d), "v/kernel": (d, d), "out/kernel": (d, d),
                   "fc1/kernel": (d, f), "fc1/bias": (f,), "fc2/kernel": (f, d)})
    return shapes


def _checked_layer_getter(get: Getter, name: str, shapes, table, prefix: str) -> np.ndarray:
    array = np.asarray(get(name))
    theirs = name[len(prefix):].split(".", 1)[1]
    for ours, hf, transpose in table:
        if hf == theirs:
            expected = shapes[ours][::-1] if transpose else shapes[ours]
            return check_shape(name, array, expected)
    return array


def conv_weight_to_hwio(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def hwio_to_conv_weight(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def siglip_from_hf(get: Getter, cfg: SiglipConfig, prefix: str = "vision_model.") -> dict:
    """HF SigLIP vision tensors -> our `vision` subtree (only the blocks we run; no post_layernorm, no head)."""
    shapes = siglip_expected_shapes(cfg)
    layer_prefix = prefix + "encoder.layers."
    checked = lambda name: _checked_layer_getter(get, name, shapes, SIGLIP_BLOCK, layer_prefix)
    p, d = cfg.patch_size, cfg.width
    patch = check_shape(prefix + "embeddings.patch_embedding.weight",
                        np.asarray(get(prefix + "embeddings.patch_embedding.weight")), (d, 3, p, p))
    return {
        "patch_kernel": conv_weight_to_hwio(patch),
        "patch_bias": check_shape(prefix + "embeddings.patch_embedding.bias",
                                  np.asarray(get(prefix + "embeddings.patch_embedding.bias")), (d,)),
        "pos_embed": check_shape(prefix + "embeddings.position_embedding.weight",
                                 np.asarray(get(prefix + "embeddings.position_embedding.weight")), (cfg.num_patches, d)),
        "blocks": _stack_layers(checked, SIGLIP_BLOCK, layer_prefix, cfg.num_blocks_run),
    }


def siglip_to_hf(tree: dict, prefix: str = "vision_model.") -> Iterator[tuple[str, np.ndarray]]:
    yield prefix + "embeddings.patch_embedding.weight", hwio_to_conv_weight(np.asarray(tree["patch_kernel"]))
    yield prefix + "embeddings.patch_embedding.bias", np.asarray(tree["patch_bias"])
    yield prefix + "embeddings.position_embedding.weight", np.asarray(tree["pos_embed"])
    yield from _unstack_layers(tree["blocks"], SIGLIP_BLOCK, prefix + "encoder.layers.")


def projector_from_torch(get: Getter, prefix: str = "mlp_projector.") -> dict:
    """The reference's projector (`mlp_projector.0` / `mlp_projector.2` Linear layers) -> our `projector` subtree."""
    return {"fc1": {"kernel": np.asarray(get(prefix + "0.weight")).T, "bias": np.asarray(get(prefix + "0.bias"))},
            "fc2": {"kernel": np.asarray(get(prefix + "2.weight")).T, "bias": np.asarray(get(prefix + "2.bias"))}}


def projector_to_torch(tree: dict, prefix: str = "mlp_projector.") -> Iterator[tuple[str, np.ndarray]]:
    for ours, theirs in (("fc1", "0"), ("fc2", "2")):
        yield f"{prefix}{theirs}.weight", np.ascontiguousarray(np.asarray(tree[ours]["kernel"]).T)
        yield f"{prefix}{theirs}.bias", np.asarray(tree[ours]["bias"])
