"""Hugging Face transformers naming <-> oq2vl_jax parameter trees, for Qwen2 (`Qwen2ForCausalLM`) and SigLIP
(`SiglipVisionModel` / the vision half of `SiglipModel`).

Our trees are nested dicts of numpy arrays shaped like `nnx.state(model, nnx.Param).to_pure_dict()`; stacked blocks
carry a leading layer axis. HF `Linear` weights are [out, in]; ours are [in, out]. Only transposes, reshapes and
stacking happen here, so conversions are bit-exact both ways.

Readers take `get(name) -> np.ndarray` so tensors are read lazily, one at a time, straight from the file.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from oq2vl_jax.pretrained.tensor_files import Getter, TensorSource
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH, Qwen2Config, SiglipConfig


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


def pop_path(tree: dict, path: str):
    keys = path.split("/")
    for key in keys[:-1]:
        tree = tree[key]
    return tree.pop(keys[-1])


def check_shape(name: str, array: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
    if tuple(array.shape) != tuple(expected):
        raise UserError(f"tensor '{name}' has shape {tuple(array.shape)} but the model config expects {tuple(expected)}")
    return array


def stack_layers(get: Getter, table, prefix: str, count: int, start: int = 0,
                  shapes: dict | None = None) -> dict:
    """Reads layers start..start+count-1 of every table entry into one preallocated [count, ...] array each (so a
    parameter is never held both as a list of layers and stacked)."""
    out: dict = {}
    for ours, theirs, transpose in table:
        stacked = None
        for i in range(count):
            name = f"{prefix}{start + i}.{theirs}"
            a = np.asarray(get(name))
            if shapes is not None and ours in shapes:
                expected = shapes[ours][::-1] if transpose else shapes[ours]
                check_shape(name, a, expected)
            a = a.T if transpose else a
            if stacked is None:
                stacked = np.empty((count,) + a.shape, a.dtype)
            stacked[i] = a
        if stacked is not None:
            set_path(out, ours, stacked)
    return out


def _unstack_layers(trees, table, prefix: str, start: int = 0, consume: bool = False,
                    ) -> Iterator[tuple[str, np.ndarray]]:
    """Stacked subtrees (one or several, numbered on from `start`) -> per-layer tensors in HF layout.
    With `consume`, each stacked array is removed from its tree once written out, so memory is freed as we go."""
    trees = [t for t in (trees if isinstance(trees, (list, tuple)) else [trees]) if t]
    for ours, theirs, transpose in table:
        i = start
        for tree in trees:
            stacked = np.asarray(pop_path(tree, ours) if consume else get_path(tree, ours))
            for j in range(stacked.shape[0]):
                a = stacked[j]
                yield f"{prefix}{i}.{theirs}", np.ascontiguousarray(a.T if transpose else a)
                i += 1
            del stacked


def qwen2_expected_shapes(cfg: Qwen2Config) -> dict[str, tuple[int, ...]]:
    d, qd, kvd, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    return {"input_norm/scale": (d,), "q/kernel": (d, qd), "q/bias": (qd,), "k/kernel": (d, kvd), "k/bias": (kvd,),
            "v/kernel": (d, kvd), "v/bias": (kvd,), "o/kernel": (qd, d), "post_attention_norm/scale": (d,),
            "gate/kernel": (d, f), "up/kernel": (d, f), "down/kernel": (f, d)}


def qwen2_from_hf(get: Getter, cfg: Qwen2Config, prefix: str = "model.", lm_head: str = "lm_head.weight") -> dict:
    """HF Qwen2ForCausalLM tensors -> our `llm` subtree."""
    shapes = qwen2_expected_shapes(cfg)
    tree = {
        "embed": check_shape(prefix + "embed_tokens.weight", np.asarray(get(prefix + "embed_tokens.weight")),
                             (cfg.vocab_size, cfg.hidden_size)),
        "layers": stack_layers(get, QWEN2_LAYER, prefix + "layers.", cfg.num_layers, shapes=shapes),
        "norm": {"scale": check_shape(prefix + "norm.weight", np.asarray(get(prefix + "norm.weight")),
                                      (cfg.hidden_size,))},
    }
    if not cfg.tie_word_embeddings:
        head = check_shape(lm_head, np.asarray(get(lm_head)), (cfg.vocab_size, cfg.hidden_size))
        tree["lm_head"] = {"kernel": np.ascontiguousarray(head.T)}
    return tree


def qwen2_to_hf(tree: dict, cfg: Qwen2Config, prefix: str = "model.", lm_head: str | None = "lm_head.weight",
                consume: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Our `llm` subtree -> HF tensors. With tied embeddings `lm_head` (if a name is given) repeats embed_tokens
    (the same array object, so writers can store it once)."""
    embed = np.asarray(tree.pop("embed") if consume else tree["embed"])
    yield prefix + "embed_tokens.weight", embed
    yield from _unstack_layers(tree["layers"], QWEN2_LAYER, prefix + "layers.", consume=consume)
    yield prefix + "norm.weight", np.asarray(tree["norm"]["scale"])
    if lm_head is not None:
        if cfg.tie_word_embeddings:
            yield lm_head, embed
        else:
            head = tree.pop("lm_head") if consume else tree["lm_head"]
            yield lm_head, np.ascontiguousarray(np.asarray(head["kernel"]).T)


def siglip_expected_shapes(cfg: SiglipConfig) -> dict[str, tuple[int, ...]]:
    d, f = cfg.width, cfg.mlp_dim
    shapes = {name: (d,) for name, _, _ in SIGLIP_BLOCK if not name.endswith("kernel")}
    shapes.update({"q/kernel": (d, d), "k/kernel": (d, d), "v/kernel": (d, d), "out/kernel": (d, d),
                   "fc1/kernel": (d, f), "fc1/bias": (f,), "fc2/kernel": (f, d)})
    return shapes


def pos_embed_grid(pos: np.ndarray, width: int, name: str) -> int:
    """The patch grid side of a [1, g*g, width] position embedding (timm / big_vision layout); UserError otherwise."""
    grid = math.isqrt(pos.shape[-2]) if pos.ndim >= 2 else 0
    if pos.ndim != 3 or grid * grid != pos.shape[1] or pos.shape[2] != width:
        raise UserError(f"tensor '{name}' has shape {pos.shape}, expected [1, g*g, {width}]")
    return grid


def conv_weight_to_hwio(weight: np.ndarray) -> np.ndarray:
    """torch Conv2d [out, in, kh, kw] -> [kh, kw, in, out]."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def hwio_to_conv_weight(kernel: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def siglip_from_hf(get: Getter, cfg: SiglipConfig, prefix: str = "vision_model.") -> dict:
    """HF SigLIP vision tensors -> our `vision` subtree (only the blocks we run; no post_layernorm, no head)."""
    shapes = siglip_expected_shapes(cfg)
    layer_prefix = prefix + "encoder.layers."
    p, d = cfg.patch_size, cfg.width
    patch = check_shape(prefix + "embeddings.patch_embedding.weight",
                        np.asarray(get(prefix + "embeddings.patch_embedding.weight")), (d, 3, p, p))
    return {
        "patch_kernel": conv_weight_to_hwio(patch),
        "patch_bias": check_shape(prefix + "embeddings.patch_embedding.bias",
                                  np.asarray(get(prefix + "embeddings.patch_embedding.bias")), (d,)),
        "pos_embed": check_shape(prefix + "embeddings.position_embedding.weight",
                                 np.asarray(get(prefix + "embeddings.position_embedding.weight")), (cfg.num_patches, d)),
        "blocks": stack_layers(get, SIGLIP_BLOCK, layer_prefix, cfg.num_blocks_run, shapes=shapes),
    }


def siglip_to_hf(tree: dict, prefix: str = "vision_model.", extra: dict | None = None,
                 consume: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """Our `vision` subtree (+ the `vision_extra` tree: later blocks, final norm, MAP head) -> HF SigLIP tensors."""
    yield prefix + "embeddings.patch_embedding.weight", hwio_to_conv_weight(np.asarray(tree["patch_kernel"]))
    yield prefix + "embeddings.patch_embedding.bias", np.asarray(tree["patch_bias"])
    yield prefix + "embeddings.position_embedding.weight", np.asarray(tree["pos_embed"])
    extra = extra or {}
    yield from _unstack_layers([tree["blocks"], extra.get("blocks")], SIGLIP_BLOCK, prefix + "encoder.layers.",
                               consume=consume)
    if "norm" in extra:
        yield prefix + "post_layernorm.weight", np.asarray(extra["norm"]["scale"])
        yield prefix + "post_layernorm.bias", np.asarray(extra["norm"]["bias"])
    if "head" in extra:
        yield from _map_head_to_hf(extra["head"], prefix + "head.")


def projector_from_torch(get: Getter, prefix: str = "mlp_projector.") -> dict:
    """The reference's projector (`mlp_projector.0` / `mlp_projector.2` Linear layers) -> our `projector` subtree."""
    return {"fc1": {"kernel": np.asarray(get(prefix + "0.weight")).T, "bias": np.asarray(get(prefix + "0.bias"))},
            "fc2": {"kernel": np.asarray(get(prefix + "2.weight")).T, "bias": np.asarray(get(prefix + "2.bias"))}}


def projector_to_torch(tree: dict, prefix: str = "mlp_projector.") -> Iterator[tuple[str, np.ndarray]]:
    for ours, theirs in (("fc1", "0"), ("fc2", "2")):
        yield f"{prefix}{theirs}.weight", np.ascontiguousarray(np.asarray(tree[ours]["kernel"]).T)
        yield f"{prefix}{theirs}.bias", np.asarray(tree[ours]["bias"])


# ------------------------------------------------------------------------------------------------------------------
# The vision tower's parts we do not run (blocks after the feature layer, final LayerNorm, MAP pooling head) travel
# beside the parameters as a `vision_extra` tree so exports can write complete towers:
#   {"blocks": <stacked like vision/blocks>, "norm": {scale, bias},
#    "head": {"probe" [1, n, D], "q"|"k"|"v"|"out"|"fc1"|"fc2": {kernel [in, out], bias}, "norm": {scale, bias}}}
# Every key is optional.

def dense_from_hf(get: Getter, name: str) -> dict:
    return {"kernel": np.ascontiguousarray(np.asarray(get(name + ".weight")).T), "bias": np.asarray(get(name + ".bias"))}


def dense_to_hf(dense: dict, name: str) -> Iterator[tuple[str, np.ndarray]]:
    yield name + ".weight", np.ascontiguousarray(np.asarray(dense["kernel"]).T)
    yield name + ".bias", np.asarray(dense["bias"])


def norm_from_hf(get: Getter, name: str) -> dict:
    return {"scale": np.asarray(get(name + ".weight")), "bias": np.asarray(get(name + ".bias"))}


def norm_to_hf(norm: dict, name: str) -> Iterator[tuple[str, np.ndarray]]:
    yield name + ".weight", np.asarray(norm["scale"])
    yield name + ".bias", np.asarray(norm["bias"])


def split_fused(name: str, fused: np.ndarray, parts: int, width: int) -> list[np.ndarray]:
    """A fused [parts * width(, width)] projection (qkv / kv / in_proj) -> `parts` arrays, checking the shape."""
    expected = (parts * width,) + ((width,) if fused.ndim == 2 else ())
    check_shape(name, fused, expected)
    return [fused[i * width:(i + 1) * width] for i in range(parts)]


def check_head(head: dict, cfg: SiglipConfig, where: str) -> dict:
    d, f = cfg.width, cfg.mlp_dim
    probe = np.asarray(head["probe"])
    if probe.ndim != 3 or probe.shape[-1] != d:
        raise UserError(f"{where} MAP head probe has shape {probe.shape}, expected [1, n, {d}]")
    expected = {"q/kernel": (d, d), "k/kernel": (d, d), "v/kernel": (d, d), "out/kernel": (d, d),
                "fc1/kernel": (d, f), "fc2/kernel": (f, d), "norm/scale": (d,)}
    for path, shape in expected.items():
        check_shape(f"{where} MAP head {path}", get_path(head, path), shape)
    return head


def _map_head_from_hf(get: Getter, prefix: str, width: int) -> dict:
    w, b = np.asarray(get(prefix + "attention.in_proj_weight")), np.asarray(get(prefix + "attention.in_proj_bias"))
    ws = split_fused(prefix + "attention.in_proj_weight", w, 3, width)
    bs = split_fused(prefix + "attention.in_proj_bias", b, 3, width)
    head = {"probe": np.asarray(get(prefix + "probe"))}
    for i, k in enumerate("qkv"):
        head[k] = {"kernel": np.ascontiguousarray(ws[i].T), "bias": bs[i].copy()}
    head["out"] = dense_from_hf(get, prefix + "attention.out_proj")
    head["norm"] = norm_from_hf(get, prefix + "layernorm")
    head["fc1"] = dense_from_hf(get, prefix + "mlp.fc1")
    head["fc2"] = dense_from_hf(get, prefix + "mlp.fc2")
    return head


def _map_head_to_hf(head: dict, prefix: str) -> Iterator[tuple[str, np.ndarray]]:
    yield prefix + "probe", np.asarray(head["probe"])
    yield prefix + "attention.in_proj_weight", np.concatenate(
        [np.asarray(head[k]["kernel"]).T for k in "qkv"], axis=0)
    yield prefix + "attention.in_proj_bias", np.concatenate([np.asarray(head[k]["bias"]) for k in "qkv"], axis=0)
    yield from dense_to_hf(head["out"], prefix + "attention.out_proj")
    yield from norm_to_hf(head["norm"], prefix + "layernorm")
    yield from dense_to_hf(head["fc1"], prefix + "mlp.fc1")
    yield from dense_to_hf(head["fc2"], prefix + "mlp.fc2")


def siglip_extra_from_hf(get: Getter, names, cfg: SiglipConfig, prefix: str = "vision_model.") -> dict:
    """The HF tower's blocks after the feature layer, `post_layernorm` and `head` (when present) -> vision_extra."""
    extra: dict = {}
    n_run = cfg.num_blocks_run
    if cfg.depth > n_run:
        extra["blocks"] = stack_layers(get, SIGLIP_BLOCK, prefix + "encoder.layers.", cfg.depth - n_run, start=n_run,
                                        shapes=siglip_expected_shapes(cfg))
    if prefix + "post_layernorm.weight" in names:
        extra["norm"] = norm_from_hf(get, prefix + "post_layernorm")
    if prefix + "head.probe" in names:
        extra["head"] = check_head(_map_head_from_hf(get, prefix + "head.", cfg.width), cfg, "HF")
    return extra


# ------------------------------------------------------------------------------------------------------------------
# Configs (config.json) <-> our dataclasses.

HF_ACT_TO_GELU = {"gelu": GELU_EXACT, "gelu_pytorch_tanh": GELU_TANH, "gelu_new": GELU_TANH}
GELU_TO_HF_ACT = {GELU_EXACT: "gelu", GELU_TANH: "gelu_pytorch_tanh"}


def _require(d: dict, key: str, where: str):
    if key not in d:
        raise UserError(f"{where} has no '{key}'")
    return d[key]


def qwen2_config_from_hf(d: dict, where: str = "config.json") -> Qwen2Config:
    if d.get("model_type", "qwen2") != "qwen2":
        raise UserError(f"{where}: model_type is '{d.get('model_type')}', expected 'qwen2' (a Qwen2 / Qwen2.5 LLM)")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{where}: hidden_act '{d['hidden_act']}' is not supported (Qwen2 uses silu)")
    if d.get("use_sliding_window"):
        raise UserError(f"{where}: use_sliding_window=true is not supported")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"{where}: rope scaling {rope} is not supported (only the default RoPE)")
    hidden, heads = int(_require(d, "hidden_size", where)), int(_require(d, "num_attention_heads", where))
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    return Qwen2Config(
        vocab_size=int(_require(d, "vocab_size", where)), hidden_size=hidden,
        intermediate_size=int(_require(d, "intermediate_size", where)),
        num_layers=int(_require(d, "num_hidden_layers", where)), num_heads=heads,
        num_kv_heads=int(d.get("num_key_value_heads") or heads), head_dim=int(d.get("head_dim") or hidden // heads),
        rope_theta=float(theta), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)))


def qwen2_config_to_hf(cfg: Qwen2Config, base: dict | None = None, dtype: str = "float32") -> dict:
    """config.json for Qwen2ForCausalLM; `base` (the source model's config.json, if known) keeps fields we do not
    model, such as max_position_embeddings and the special token ids."""
    d = {k: v for k, v in (base or {}).items() if k not in ("rope_scaling", "torch_dtype", "transformers_version")}
    d.update({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "tie_word_embeddings": cfg.tie_word_embeddings, "use_sliding_window": False, "dtype": dtype,
    })
    d.setdefault("max_position_embeddings", 32768)
    d.setdefault("attention_dropout", 0.0)
    d.pop("layer_types", None)
    return d


def siglip_config_from_hf(d: dict, where: str = "config.json") -> SiglipConfig:
    """A SiglipVisionConfig dict, or a SiglipConfig / LlavaConfig dict holding one under 'vision_config'."""
    if "vision_config" in d:
        d = d["vision_config"]
        where = f"{where} vision_config"
    act = d.get("hidden_act", "gelu_pytorch_tanh")
    if act not in HF_ACT_TO_GELU:
        raise UserError(f"{where}: hidden_act '{act}' is not supported (expected one of {sorted(HF_ACT_TO_GELU)})")
    if int(d.get("num_channels", 3)) != 3:
        raise UserError(f"{where}: num_channels {d['num_channels']} is not 3 (RGB)")
    return SiglipConfig(
        width=int(d.get("hidden_size", 768)), depth=int(d.get("num_hidden_layers", 12)),
        mlp_dim=int(d.get("intermediate_size", 3072)), num_heads=int(d.get("num_attention_heads", 12)),
        patch_size=int(d.get("patch_size", 16)), image_size=int(d.get("image_size", 224)),
        layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)), hidden_act=HF_ACT_TO_GELU[act])


def siglip_config_to_hf(cfg: SiglipConfig, *, use_head: bool) -> dict:
    return {"model_type": "siglip_vision_model", "hidden_size": cfg.width, "intermediate_size": cfg.mlp_dim,
            "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.num_heads, "num_channels": 3,
            "image_size": cfg.image_size, "patch_size": cfg.patch_size, "hidden_act": GELU_TO_HF_ACT[cfg.hidden_act],
            "layer_norm_eps": cfg.layer_norm_eps, "attention_dropout": 0.0, "vision_use_head": use_head}


def hf_vision_prefix(source: TensorSource) -> str:
    prefix = source.find_prefix("embeddings.patch_embedding.weight", exclude=("text_model",))
    if prefix is None:
        raise UserError(f"{source.where} has no HF SigLIP vision weights ('...embeddings.patch_embedding.weight')")
    return prefix


# SigLIP towers whose image size is not grid * patch: So400m/14 at 384 px sees a 27 x 27 grid and never the last
# 6 pixel rows/columns (384 = 27 * 14 + 6). Weight files without a config only tell us the grid.
KNOWN_IMAGE_SIZES = {(14, 27): 384}
# Attention heads cannot be read off fused or 2-D weight shapes; the released SigLIP widths (B, L, So400m, g).
KNOWN_NUM_HEADS = {768: 12, 1024: 16, 1152: 16, 1536: 16}


def siglip_image_size(patch_size: int, grid: int) -> int:
    return KNOWN_IMAGE_SIZES.get((patch_size, grid), patch_size * grid)
