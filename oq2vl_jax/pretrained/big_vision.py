"""big_vision SigLIP `.npz` checkpoints (`params/img/...`) -> our vision trees.

  embedding/{kernel [p, p, 3, D] (HWIO, as ours), bias}   pos_embedding [1, P, D]
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query, key, value}/{kernel [D, H, hd],
      bias [H, hd]}, .../out/{kernel [H, hd, D], bias [D]}, LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}}
  Transformer/encoder_norm   MAPHead_0/{probe [1, 1, D], MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0}

Scanned checkpoints hold `Transformer/encoderblock/...` with a leading layer axis instead. Dense kernels are already
[in, out]; attention kernels only need their head axes merged. big_vision's SigLIP uses tanh GELU and LayerNorm eps
1e-6; heads come from the attention kernel shape.
"""

from __future__ import annotations


import numpy as np

from oq2vl_jax.pretrained import hf, tensor_files
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_TANH, SiglipConfig

ANCHOR = "embedding/kernel"
ATTN = "MultiHeadDotProductAttention_0/"

BV_BLOCK = (
    ("norm1/scale", "LayerNorm_0/scale"), ("norm1/bias", "LayerNorm_0/bias"),
    ("q/kernel", ATTN + "query/kernel"), ("q/bias", ATTN + "query/bias"),
    ("k/kernel", ATTN + "key/kernel"), ("k/bias", ATTN + "key/bias"),
    ("v/kernel", ATTN + "value/kernel"), ("v/bias", ATTN + "value/bias"),
    ("out/kernel", ATTN + "out/kernel"), ("out/bias", ATTN + "out/bias"),
    ("norm2/scale", "LayerNorm_1/scale"), ("norm2/bias", "LayerNorm_1/bias"),
    ("fc1/kernel", "MlpBlock_0/Dense_0/kernel"), ("fc1/bias", "MlpBlock_0/Dense_0/bias"),
    ("fc2/kernel", "MlpBlock_0/Dense_1/kernel"), ("fc2/bias", "MlpBlock_0/Dense_1/bias"),
)


def find_prefix(source: tensor_files.TensorSource) -> str | None:
    return source.find_prefix(ANCHOR, exclude=("txt/",))


def to_ours(name: str, a: np.ndarray) -> np.ndarray:
    """Merges the head axes of attention parameters: [D, H, hd] -> [D, H*hd], [H, hd, D] -> [H*hd, D], [H, hd] ->
    [H*hd]; everything else is already in our layout."""
    if ATTN not in name:
        return a
    if name.endswith("out/kernel"):
        return a.reshape(-1, a.shape[-1]) if a.ndim == 3 else a
    if name.endswith("kernel"):
        return a.reshape(a.shape[0], -1) if a.ndim == 3 else a
    if name.endswith("bias") and not name.endswith("out/bias"):
        return a.reshape(-1)
    return a


class BlockReader:
    """Per-block tensors of either layout; a scanned tensor is read once and sliced for every block."""

    def __init__(self, source: tensor_files.TensorSource, prefix: str, dtype, trunk: str = "Transformer"):
        # trunk: the encoder's module name, "Transformer" in the ViT, "Encoder_0" in the text transformer
        self.get, self.source, self.trunk = source.getter(prefix, dtype), source, trunk
        self.scanned = f"{prefix}{trunk}/encoderblock/LayerNorm_0/scale" in source
        self.prefix, self._cached = prefix, (None, None)

    def depth(self) -> int:
        if self.scanned:
            return self.source.get(f"{self.prefix}{self.trunk}/encoderblock/LayerNorm_0/scale").shape[0]
        n = 0
        while f"{self.prefix}{self.trunk}/encoderblock_{n}/LayerNorm_0/scale" in self.source:
            n += 1
        return n

    def name(self, i: int, theirs: str) -> str:
        return f"{self.trunk}/encoderblock/{theirs}" if self.scanned else f"{self.trunk}/encoderblock_{i}/{theirs}"

    def __call__(self, i: int, theirs: str) -> np.ndarray:
        if not self.scanned:
            return np.asarray(self.get(self.name(i, theirs)))
        key = self.name(i, theirs)
        if self._cached[0] != key:
            self._cached = (key, np.asarray(self.get(key)))
        return self._cached[1][i]


def stack_blocks(blocks: BlockReader, start: int, count: int, shapes: dict) -> dict:
    out: dict = {}
    for ours, theirs in BV_BLOCK:
        stacked = None
        for i in range(count):
            name = blocks.prefix + blocks.name(start + i, theirs)
            a = to_ours(name, blocks(start + i, theirs))
            hf.check_shape(name + f" (block {start + i}, heads merged)", a, shapes[ours])
            if stacked is None:
                stacked = np.empty((count,) + a.shape, a.dtype)
            stacked[i] = a
        hf.set_path(out, ours, stacked)
    return out


def config_from_weights(source: tensor_files.TensorSource, prefix: str) -> SiglipConfig:
    kernel = source.get(prefix + ANCHOR)
    if kernel.ndim != 4 or kernel.shape[2] != 3 or kernel.shape[0] != kernel.shape[1]:
        raise UserError(f"tensor '{prefix + ANCHOR}' has shape {kernel.shape}, expected [p, p, 3, D]")
    p, width = kernel.shape[0], kernel.shape[3]
    grid = hf.pos_embed_grid(source.get(prefix + "pos_embedding"), width, prefix + "pos_embedding")
    blocks = BlockReader(source, prefix, None)
    depth = blocks.depth()
    if depth == 0:
        raise UserError(f"{source.where} has no '{prefix}Transformer/encoderblock*' tensors")
    query = blocks(0, ATTN + "query/kernel")
    fc1 = blocks(0, "MlpBlock_0/Dense_0/kernel")
    if query.ndim != 3:
        raise UserError(f"tensor '{prefix}{blocks.name(0, ATTN + 'query/kernel')}' has shape {query.shape}, "
                        "expected [D, heads, head_dim]")
    return SiglipConfig(width=width, depth=depth, mlp_dim=fc1.shape[-1], num_heads=query.shape[1], patch_size=p,
                        image_size=hf.siglip_image_size(p, grid), layer_norm_eps=1e-6, hidden_act=GELU_TANH)


def vision_from_big_vision(source: tensor_files.TensorSource, cfg: SiglipConfig, prefix: str, dtype=None) -> tuple[dict, dict]:
    """(vision params, vision_extra) for `cfg` (whose feature_layer decides which blocks are run)."""
    get = source.getter(prefix, dtype)
    p, d = cfg.patch_size, cfg.width
    shapes = hf.siglip_expected_shapes(cfg)
    blocks = BlockReader(source, prefix, dtype)
    n_run = cfg.num_blocks_run
    vision = {
        "patch_kernel": hf.check_shape(prefix + ANCHOR, np.asarray(get(ANCHOR)), (p, p, 3, d)),
        "patch_bias": hf.check_shape(prefix + "embedding/bias", np.asarray(get("embedding/bias")), (d,)),
        "pos_embed": hf.check_shape(prefix + "pos_embedding", np.asarray(get("pos_embedding")),
                                    (1, cfg.num_patches, d)).reshape(cfg.num_patches, d),
        "blocks": stack_blocks(blocks, 0, n_run, shapes),
    }
    extra: dict = {}
    if cfg.depth > n_run:
        extra["blocks"] = stack_blocks(blocks, n_run, cfg.depth - n_run, shapes)
    if prefix + "Transformer/encoder_norm/scale" in source:
        extra["norm"] = {"scale": np.asarray(get("Transformer/encoder_norm/scale")),
                         "bias": np.asarray(get("Transformer/encoder_norm/bias"))}
    if prefix + "MAPHead_0/probe" in source:
        m = "MAPHead_0/"
        dense = lambda name: {"kernel": to_ours(name + "/kernel", np.asarray(get(name + "/kernel"))),
                              "bias": to_ours(name + "/bias", np.asarray(get(name + "/bias")))}
        extra["head"] = hf.check_head({
            "probe": np.asarray(get(m + "probe")),
            "q": dense(m + ATTN + "query"), "k": dense(m + ATTN + "key"), "v": dense(m + ATTN + "value"),
            "out": dense(m + ATTN + "out"),
            "norm": {"scale": np.asarray(get(m + "LayerNorm_0/scale")), "bias": np.asarray(get(m + "LayerNorm_0/bias"))},
            "fc1": dense(m + "MlpBlock_0/Dense_0"), "fc2": dense(m + "MlpBlock_0/Dense_1"),
        }, cfg, str(source.where))
    return vision, extra
