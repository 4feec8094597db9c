"""timm / open_clip SigLIP naming (`vit_so400m_patch14_siglip_384`) <-> our vision trees.

  patch_embed.proj.{weight [D, 3, p, p], bias}   pos_embed [1, P, D]
  blocks.{i}.{norm1, attn.qkv [3D, D] (q, k, v stacked), attn.proj, norm2, mlp.fc1, mlp.fc2}.{weight, bias}
  norm.{weight, bias}   attn_pool.{latent [1, n, D], q, kv [2D, D] (k, v), proj, norm, mlp.fc1, mlp.fc2}

open_clip files carry the same keys under `visual.trunk.`, the reference's prismatic checkpoints under `featurizer.`.
timm's SigLIP uses exact (erf) GELU and LayerNorm eps 1e-6; sizes come from tensor shapes.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from oq2vl_jax.pretrained import hf, tensor_files
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT, SiglipConfig

ANCHOR = "patch_embed.proj.weight"

# q/k/v are virtual names: `_getter` slices them out of the fused attn.qkv tensors.
TIMM_BLOCK = (
    ("norm1/scale", "norm1.weight", False), ("norm1/bias", "norm1.bias", False),
    ("q/kernel", "attn.q.weight", True), ("q/bias", "attn.q.bias", False),
    ("k/kernel", "attn.k.weight", True), ("k/bias", "attn.k.bias", False),
    ("v/kernel", "attn.v.weight", True), ("v/bias", "attn.v.bias", False),
    ("out/kernel", "attn.proj.weight", True), ("out/bias", "attn.proj.bias", False),
    ("norm2/scale", "norm2.weight", False), ("norm2/bias", "norm2.bias", False),
    ("fc1/kernel", "mlp.fc1.weight", True), ("fc1/bias", "mlp.fc1.bias", False),
    ("fc2/kernel", "mlp.fc2.weight", True), ("fc2/bias", "mlp.fc2.bias", False),
)


def find_prefix(source: tensor_files.TensorSource) -> str | None:
    return source.find_prefix(ANCHOR, exclude=("text",))


def _getter(get: hf.Getter, width: int) -> hf.Getter:
    def g(name: str) -> np.ndarray:
        for i, part in enumerate("qkv"):
            for kind in ("weight", "bias"):
                if name.endswith(f"attn.{part}.{kind}"):
                    fused_name = name[: -len(f"{part}.{kind}")] + f"qkv.{kind}"
                    return hf.split_fused(fused_name, np.asarray(get(fused_name)), 3, width)[i]
        return get(name)

    return g


def _sibling_image_size(path: str) -> int | None:
    """Image size from the config files that ship beside timm / open_clip weights, if any."""
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    open_clip = os.path.join(folder, "open_clip_config.json")
    if os.path.isfile(open_clip):
        size = tensor_files.read_json(open_clip).get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
        if size:
            return int(size if isinstance(size, int) else size[0])
    timm_cfg = os.path.join(folder, "config.json")
    if os.path.isfile(timm_cfg):
        size = tensor_files.read_json(timm_cfg).get("pretrained_cfg", {}).get("input_size")
        if size:
            return int(size[-1])
    return None


def config_from_weights(source: tensor_files.TensorSource, prefix: str, path: str | None = None) -> SiglipConfig:
    """Sizes from tensor shapes; heads from the known SigLIP widths (override them if the tower is unusual)."""
    if prefix + "cls_token" in source:
        raise UserError(f"{source.where} is a class-token ViT, not a SigLIP tower")
    patch = source.get(prefix + ANCHOR)
    if patch.ndim != 4 or patch.shape[1] != 3 or patch.shape[2] != patch.shape[3]:
        raise UserError(f"tensor '{prefix + ANCHOR}' has shape {patch.shape}, expected [D, 3, p, p]")
    width, p = patch.shape[0], patch.shape[2]
    grid = hf.pos_embed_grid(source.get(prefix + "pos_embed"), width, prefix + "pos_embed")
    depth = 0
    while f"{prefix}blocks.{depth}.norm1.weight" in source:
        depth += 1
    if depth == 0:
        raise UserError(f"{source.where} has no '{prefix}blocks.0.*' tensors")
    mlp_dim = source.get(f"{prefix}blocks.0.mlp.fc1.weight").shape[0]
    image_size = (_sibling_image_size(path) if path else None) or hf.siglip_image_size(p, grid)
    return SiglipConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=hf.KNOWN_NUM_HEADS.get(width, 0),
                        patch_size=p, image_size=image_size, layer_norm_eps=1e-6, hidden_act=GELU_EXACT)


def vision_from_timm(source: tensor_files.TensorSource, cfg: SiglipConfig, prefix: str, dtype=None) -> tuple[dict, dict]:
    """(vision params, vision_extra) for `cfg` (whose feature_layer decides which blocks are run)."""
    get = _getter(source.getter(prefix, dtype), cfg.width)
    p, d = cfg.patch_size, cfg.width
    shapes = hf.siglip_expected_shapes(cfg)
    patch = hf.check_shape(prefix + ANCHOR, np.asarray(get(ANCHOR)), (d, 3, p, p))
    pos = hf.check_shape(prefix + "pos_embed", np.asarray(get("pos_embed")), (1, cfg.num_patches, d))
    vision = {
        "patch_kernel": hf.conv_weight_to_hwio(patch),
        "patch_bias": hf.check_shape(prefix + "patch_embed.proj.bias", np.asarray(get("patch_embed.proj.bias")), (d,)),
        "pos_embed": pos.reshape(cfg.num_patches, d),
        "blocks": hf.stack_layers(get, TIMM_BLOCK, "blocks.", cfg.num_blocks_run, shapes=shapes),
    }
    extra: dict = {}
    n_run = cfg.num_blocks_run
    if cfg.depth > n_run:
        extra["blocks"] = hf.stack_layers(get, TIMM_BLOCK, "blocks.", cfg.depth - n_run, start=n_run, shapes=shapes)
    if prefix + "norm.weight" in source:
        extra["norm"] = hf.norm_from_hf(get, "norm")
    if prefix + "attn_pool.latent" in source:
        k, v = hf.split_fused(prefix + "attn_pool.kv.weight", np.asarray(get("attn_pool.kv.weight")), 2, d)
        kb, vb = hf.split_fused(prefix + "attn_pool.kv.bias", np.asarray(get("attn_pool.kv.bias")), 2, d)
        extra["head"] = hf.check_head({
            "probe": np.asarray(get("attn_pool.latent")), "q": hf.dense_from_hf(get, "attn_pool.q"),
            "k": {"kernel": np.ascontiguousarray(k.T), "bias": kb.copy()},
            "v": {"kernel": np.ascontiguousarray(v.T), "bias": vb.copy()},
            "out": hf.dense_from_hf(get, "attn_pool.proj"), "norm": hf.norm_from_hf(get, "attn_pool.norm"),
            "fc1": hf.dense_from_hf(get, "attn_pool.mlp.fc1"), "fc2": hf.dense_from_hf(get, "attn_pool.mlp.fc2"),
        }, cfg, str(source.where))
    return vision, extra


def _layer(trees: list[dict], path: str, i: int) -> np.ndarray:
    for tree in trees:
        stacked = hf.get_path(tree, path)
        if i < stacked.shape[0]:
            return np.asarray(stacked[i])
        i -= stacked.shape[0]
    raise IndexError(path)


def vision_to_timm(vision: dict, extra: dict | None, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Our vision tree (+ vision_extra) -> timm tensors (complete towers need the extra blocks, norm and head)."""
    extra = extra or {}
    yield prefix + ANCHOR, hf.hwio_to_conv_weight(np.asarray(vision["patch_kernel"]))
    yield prefix + "patch_embed.proj.bias", np.asarray(vision["patch_bias"])
    yield prefix + "pos_embed", np.asarray(vision["pos_embed"])[None]
    trees = [t for t in (vision["blocks"], extra.get("blocks")) if t]
    depth = sum(hf.get_path(t, "norm1/scale").shape[0] for t in trees)
    t = lambda a: np.ascontiguousarray(a.T)
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        yield b + "norm1.weight", _layer(trees, "norm1/scale", i)
        yield b + "norm1.bias", _layer(trees, "norm1/bias", i)
        yield b + "attn.qkv.weight", np.concatenate([_layer(trees, f"{k}/kernel", i).T for k in "qkv"], axis=0)
        yield b + "attn.qkv.bias", np.concatenate([_layer(trees, f"{k}/bias", i) for k in "qkv"], axis=0)
        yield b + "attn.proj.weight", t(_layer(trees, "out/kernel", i))
        yield b + "attn.proj.bias", _layer(trees, "out/bias", i)
        yield b + "norm2.weight", _layer(trees, "norm2/scale", i)
        yield b + "norm2.bias", _layer(trees, "norm2/bias", i)
        for fc in ("fc1", "fc2"):
            yield b + f"mlp.{fc}.weight", t(_layer(trees, f"{fc}/kernel", i))
            yield b + f"mlp.{fc}.bias", _layer(trees, f"{fc}/bias", i)
    if "norm" in extra:
        yield from hf.norm_to_hf(extra["norm"], prefix + "norm")
    if "head" in extra:
        head, a = extra["head"], prefix + "attn_pool."
        yield a + "latent", np.asarray(head["probe"])
        yield from hf.dense_to_hf(head["q"], a + "q")
        yield a + "kv.weight", np.concatenate([np.asarray(head[k]["kernel"]).T for k in "kv"], axis=0)
        yield a + "kv.bias", np.concatenate([np.asarray(head[k]["bias"]) for k in "kv"], axis=0)
        yield from hf.dense_to_hf(head["out"], a + "proj")
        yield from hf.norm_to_hf(head["norm"], a + "norm")
        yield from hf.dense_to_hf(head["fc1"], a + "mlp.fc1")
        yield from hf.dense_to_hf(head["fc2"], a + "mlp.fc2")


def with_heads(cfg: SiglipConfig, where: str) -> SiglipConfig:
    if cfg.num_heads <= 0:
        raise UserError(f"{where}: the number of attention heads of a width-{cfg.width} tower cannot be read from "
                        "its weights; pass it (CLI --vision-heads, or vision_overrides={'num_heads': H})")
    return cfg

