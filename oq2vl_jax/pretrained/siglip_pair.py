"""Both SigLIP towers (image-text scoring) from HF `SiglipModel`, big_vision `.npz` and open_clip checkpoints.

The vision tower is read by the existing vision importers with every block run (feature_layer -1), its final
LayerNorm and MAP head required. The text tower:

  HF          text_model.embeddings.{token_embedding.weight [V, D], position_embedding.weight [L, D]}
              text_model.encoder.layers.{i}.* (the vision block names), text_model.final_layer_norm,
              text_model.head [P, D];  logit_scale [1], logit_bias [1]
  big_vision  params/txt/Embed_0/embedding [V, D], params/txt/pos_embedding [1, L, D],
              params/txt/Encoder_0/encoderblock_{i}/... (or scanned encoderblock/...), Encoder_0/encoder_norm,
              params/txt/head/{kernel [D, P], bias};  params/t [1], params/b [1]
  open_clip   text.token_embedding.weight, text.positional_embedding [L, D],
              text.transformer.resblocks.{i}.{ln_1, attn.in_proj_{weight [3D, D], bias}, attn.out_proj, ln_2,
              mlp.c_fc, mlp.c_proj}, text.ln_final, text.text_projection [P, D] (+ bias);  logit_scale, logit_bias

GELU: HF from its config; big_vision tanh; open_clip exact (`nn.GELU`, as its timm vision trunk). Tensors are only
transposed, reshaped and stacked, so the import is bit-exact.
"""

from __future__ import annotations

import os

import numpy as np

from oq2vl_jax.pretrained import big_vision, hf, importer, tensor_files
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH, SiglipPairConfig, SiglipTextConfig

OPEN_CLIP_BLOCK = (
    ("norm1/scale", "ln_1.weight", False), ("norm1/bias", "ln_1.bias", False),
    ("q/kernel", "attn.q.weight", True), ("q/bias", "attn.q.bias", False),
    ("k/kernel", "attn.k.weight", True), ("k/bias", "attn.k.bias", False),
    ("v/kernel", "attn.v.weight", True), ("v/bias", "attn.v.bias", False),
    ("out/kernel", "attn.out_proj.weight", True), ("out/bias", "attn.out_proj.bias", False),
    ("norm2/scale", "ln_2.weight", False), ("norm2/bias", "ln_2.bias", False),
    ("fc1/kernel", "mlp.c_fc.weight", True), ("fc1/bias", "mlp.c_fc.bias", False),
    ("fc2/kernel", "mlp.c_proj.weight", True), ("fc2/bias", "mlp.c_proj.bias", False),
)
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _scalar(source: tensor_files.TensorSource, name: str) -> np.ndarray:
    a = np.asarray(source.get(name), np.float32)
    if a.size != 1:
        raise UserError(f"tensor '{name}' in {source.where} has shape {a.shape}, expected a scalar")
    return a.reshape(())


def _vision(source: tensor_files.TensorSource, hf_config: dict | None, path: str | None, heads: int | None = None):
    overrides = {"feature_layer": -1} | ({"num_heads": heads} if heads else {})
    cfg, trunk, extra, kind = importer.vision_from_source(source, overrides=overrides, hf_config=hf_config, path=path)
    missing = [k for k in ("norm", "head") if k not in extra]
    if missing:
        raise UserError(f"{source.where}: the vision tower has no {' / '.join(missing)} (final LayerNorm, MAP "
                        "head): image embeddings need both")
    return cfg, {"trunk": trunk, "norm": extra["norm"], "head": extra["head"]}, kind


def _text_tree(get, cfg: SiglipTextConfig, embed: np.ndarray, pos: np.ndarray, blocks: dict, norm: dict,
               head_kernel: np.ndarray, head_bias: np.ndarray) -> dict:
    d = cfg.width
    return {"token_embed": hf.check_shape("text token embedding", embed, (cfg.vocab_size, d)),
            "pos_embed": hf.check_shape("text position embedding", pos, (cfg.max_length, d)),
            "blocks": blocks, "norm": norm,
            "head": {"kernel": hf.check_shape("text head kernel", head_kernel, (d, cfg.projection_dim)),
                     "bias": hf.check_shape("text head bias", head_bias, (cfg.projection_dim,))}}


# ---------------------------------------------------------------------------------------------------------- HF

def text_config_from_hf(d: dict, where: str) -> SiglipTextConfig:
    act = d.get("hidden_act", "gelu_pytorch_tanh")
    if act not in hf.HF_ACT_TO_GELU:
        raise UserError(f"{where}: text hidden_act '{act}' is not supported")
    width = int(d.get("hidden_size", 768))
    return SiglipTextConfig(
        vocab_size=int(d.get("vocab_size", 32000)), width=width, depth=int(d.get("num_hidden_layers", 12)),
        mlp_dim=int(d.get("intermediate_size", 3072)), num_heads=int(d.get("num_attention_heads", 12)),
        max_length=int(d.get("max_position_embeddings", 64)),
        projection_dim=int(d.get("projection_size") or width), layer_norm_eps=float(d.get("layer_norm_eps", 1e-6)),
        hidden_act=hf.HF_ACT_TO_GELU[act])


def text_from_hf(get, cfg: SiglipTextConfig, prefix: str = "text_model.") -> dict:
    e = prefix + "embeddings."
    head = hf.check_shape(prefix + "head.weight", np.asarray(get(prefix + "head.weight")), (cfg.projection_dim, cfg.width))
    return _text_tree(get, cfg, np.asarray(get(e + "token_embedding.weight")),
                      np.asarray(get(e + "position_embedding.weight")),
                      hf.stack_layers(get, hf.SIGLIP_BLOCK, prefix + "encoder.layers.", cfg.depth,
                                       shapes=hf.siglip_expected_shapes(cfg)),
                      hf.norm_from_hf(get, prefix + "final_layer_norm"),
                      np.ascontiguousarray(head.T), np.asarray(get(prefix + "head.bias")))


def load_hf(path: str, dtype) -> tuple[SiglipPairConfig, dict]:
    config = tensor_files.read_json(os.path.join(path, "config.json"), "SigLIP config")
    where = os.path.join(path, "config.json")
    if "text_config" not in config or "vision_config" not in config:
        raise UserError(f"{where} is not a two-tower SiglipModel config (needs text_config and vision_config)")
    source = tensor_files.open_hf_weights(path)
    vision_cfg, vision, _ = _vision(source, config, None)
    text_cfg = text_config_from_hf(config["text_config"], where)
    prefix = source.find_prefix("embeddings.token_embedding.weight")
    if prefix is None:
        raise UserError(f"{source.where} has no text tower ('text_model.embeddings.token_embedding.weight')")
    text = text_from_hf(source.getter(prefix, dtype), text_cfg, prefix="")
    top = prefix[: -len("text_model.")] if prefix.endswith("text_model.") else ""
    tree = {"vision": vision, "text": text, "logit_scale": _scalar(source, top + "logit_scale"),
            "logit_bias": _scalar(source, top + "logit_bias")}
    return SiglipPairConfig(vision=vision_cfg, text=text_cfg), tree


# -------------------------------------------------------------------------------------------------- big_vision

def load_big_vision(path: str, dtype) -> tuple[SiglipPairConfig, dict]:
    source = tensor_files.open_tensor_file(path)
    vision_cfg, vision, _ = _vision(source, None, path)
    prefix = source.find_prefix("Embed_0/embedding", exclude=("img/",))
    if prefix is None:
        raise UserError(f"{source.where} has no text tower ('params/txt/Embed_0/embedding')")
    get = source.getter(prefix, dtype)
    embed = np.asarray(get("Embed_0/embedding"))
    pos = np.asarray(get("pos_embedding"))
    blocks = big_vision.BlockReader(source, prefix, dtype, trunk="Encoder_0")
    depth = blocks.depth()
    if depth == 0 or pos.ndim != 3:
        raise UserError(f"{source.where}: text tower without '{prefix}Encoder_0/encoderblock*' or with a "
                        f"pos_embedding of shape {pos.shape} (expected [1, L, D])")
    query = blocks(0, big_vision.ATTN + "query/kernel")
    head_kernel = np.asarray(get("head/kernel"))
    cfg = SiglipTextConfig(vocab_size=embed.shape[0], width=embed.shape[1], depth=depth,
                           mlp_dim=blocks(0, "MlpBlock_0/Dense_0/kernel").shape[-1], num_heads=query.shape[1],
                           max_length=pos.shape[1], projection_dim=head_kernel.shape[-1], hidden_act=GELU_TANH)
    cfg.validate()
    text = _text_tree(get, cfg, embed, pos.reshape(pos.shape[1:]),
                      big_vision.stack_blocks(blocks, 0, depth, hf.siglip_expected_shapes(cfg)),
                      {"scale": np.asarray(get("Encoder_0/encoder_norm/scale")),
                       "bias": np.asarray(get("Encoder_0/encoder_norm/bias"))},
                      head_kernel, np.asarray(get("head/bias")))
    top = prefix[: -len("txt/")]
    tree = {"vision": vision, "text": text, "logit_scale": _scalar(source, top + "t"),
            "logit_bias": _scalar(source, top + "b")}
    return SiglipPairConfig(vision=vision_cfg, text=cfg), tree


# --------------------------------------------------------------------------------------------------- open_clip

def load_open_clip(path: str, dtype, vision_heads: int | None = None) -> tuple[SiglipPairConfig, dict]:
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        files = [os.path.join(path, n) for n in OPEN_CLIP_FILES if os.path.isfile(os.path.join(path, n))]
        if not files:
            raise UserError(f"'{path}' has none of {list(OPEN_CLIP_FILES)}")
        path = files[0]
    source = tensor_files.open_tensor_file(path)
    vision_cfg, vision, _ = _vision(source, None, path, vision_heads)
    prefix = source.find_prefix("token_embedding.weight")
    if prefix is None:
        raise UserError(f"{source.where} has no open_clip text tower ('text.token_embedding.weight')")
    text_cfg_json = {}
    cfg_path = os.path.join(folder, "open_clip_config.json")
    if os.path.isfile(cfg_path):
        text_cfg_json = tensor_files.read_json(cfg_path).get("model_cfg", {}).get("text_cfg", {})
    get = source.getter(prefix, dtype)
    embed, pos = np.asarray(get("token_embedding.weight")), np.asarray(get("positional_embedding"))
    width = embed.shape[1]
    depth = 0
    while f"{prefix}transformer.resblocks.{depth}.ln_1.weight" in source:
        depth += 1
    proj = np.asarray(get("text_projection.weight"))
    heads = int(text_cfg_json.get("heads") or hf.KNOWN_NUM_HEADS.get(width, 0))
    if heads <= 0:
        raise UserError(f"{source.where}: the text tower's head count is unknown (no open_clip_config.json beside it)")
    cfg = SiglipTextConfig(vocab_size=embed.shape[0], width=width, depth=depth,
                           mlp_dim=source.get(f"{prefix}transformer.resblocks.0.mlp.c_fc.weight").shape[0],
                           num_heads=heads, max_length=pos.shape[0], projection_dim=proj.shape[0],
                           layer_norm_eps=float(text_cfg_json.get("norm_kwargs", {}).get("eps", 1e-6)),
                           hidden_act=GELU_EXACT)
    cfg.validate()

    def fused(name: str) -> np.ndarray:  # attn.{q,k,v}.{weight,bias} are slices of attn.in_proj_{weight,bias}
        for i, part in enumerate("qkv"):
            for kind in ("weight", "bias"):
                if name.endswith(f"attn.{part}.{kind}"):
                    whole = name[: -len(f"{part}.{kind}")] + f"in_proj_{kind}"
                    return hf.split_fused(prefix + whole, np.asarray(get(whole)), 3, width)[i]
        return get(name)

    bias = get("text_projection.bias") if prefix + "text_projection.bias" in source else np.zeros(proj.shape[0], proj.dtype)
    text = _text_tree(get, cfg, embed, pos,
                      hf.stack_layers(fused, OPEN_CLIP_BLOCK, "transformer.resblocks.", depth,
                                       shapes=hf.siglip_expected_shapes(cfg)),
                      hf.norm_from_hf(get, "ln_final"), np.ascontiguousarray(proj.T), np.asarray(bias))
    top = prefix[: -len("text.")] if prefix.endswith("text.") else ""
    tree = {"vision": vision, "text": text, "logit_scale": _scalar(source, top + "logit_scale"),
            "logit_bias": _scalar(source, top + "logit_bias")}
    return SiglipPairConfig(vision=vision_cfg, text=cfg), tree


def load_pair(path: str, dtype=np.float32, vision_heads: int | None = None) -> tuple[SiglipPairConfig, dict, str]:
    """(config, parameter tree for `models.siglip_text.SiglipPair`, naming) from an HF SiglipModel directory, a
    big_vision `.npz`, or an open_clip file / directory. `vision_heads`: the timm trunk's head count when its width
    is not a released SigLIP width (open_clip only; the other formats carry it)."""
    if not os.path.exists(path):
        raise UserError(f"SigLIP model '{path}' does not exist")
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")) and not any(
            os.path.isfile(os.path.join(path, n)) for n in OPEN_CLIP_FILES):
        cfg, tree = load_hf(path, dtype)
        kind = "HF SiglipModel"
    elif path.endswith(".npz"):
        cfg, tree = load_big_vision(path, dtype)
        kind = "big_vision"
    else:
        cfg, tree = load_open_clip(path, dtype, vision_heads)
        kind = "open_clip"
    cfg.validate()
    return cfg, tree, kind
