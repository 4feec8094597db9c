"""Tiny random HF models, tokenizer and foreign-named copies of one SigLIP tower, shared by the convert tests.

The timm and big_vision namings are built here from HF-named tensors with mappings written independently of the
importer (following timm's module names and transformers' convert_siglip_to_hf key map), so an importer bug does not
cancel out.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import save_file

from model_fixtures import randomize_
from oq2vl_jax.convert.write_checkpoint import save_imported
from oq2vl_jax.demo.shapes import build_tiny_tokenizer
from oq2vl_jax.pretrained import importer

TINY_TOKENIZER_SIZE = 400  # + <|endofchunk|>, <s>, <image> stays below the LLM's 512 embedding rows
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, patch_size=4,
              image_size=28, layer_norm_eps=1e-6)
GRID = 7


def hf_qwen2_config(tied: bool = True) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                                    rms_norm_eps=1e-6, tie_word_embeddings=tied, max_position_embeddings=4096,
                                    attn_implementation="eager")


def hf_siglip_vision(act: str = "gelu", seed: int = 1) -> transformers.SiglipVisionModel:
    cfg = transformers.SiglipVisionConfig(hidden_act=act, attn_implementation="eager", **VISION)
    return randomize_(transformers.SiglipVisionModel(cfg).to(torch.float32), seed)


def numpy_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def hf_vision_state(model: transformers.SiglipVisionModel) -> dict[str, np.ndarray]:
    """HF SigLIP names without any model prefix ('embeddings.*', 'encoder.layers.*', 'post_layernorm.*', 'head.*')."""
    state = numpy_state(model)
    return {k.removeprefix("vision_model."): v for k, v in state.items()}


def timm_state_from_hf(hf: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """timm `VisionTransformer` (global_pool='map') names for the same tensors."""
    out = {"patch_embed.proj.weight": hf["embeddings.patch_embedding.weight"],
           "patch_embed.proj.bias": hf["embeddings.patch_embedding.bias"],
           "pos_embed": hf["embeddings.position_embedding.weight"][None],
           "norm.weight": hf["post_layernorm.weight"], "norm.bias": hf["post_layernorm.bias"]}
    for i in range(VISION["num_hidden_layers"]):
        h, t = f"encoder.layers.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[t + f"attn.qkv.{kind}"] = np.concatenate([hf[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], 0)
            out[t + f"attn.proj.{kind}"] = hf[h + f"self_attn.out_proj.{kind}"]
            out[t + f"norm1.{kind}"] = hf[h + f"layer_norm1.{kind}"]
            out[t + f"norm2.{kind}"] = hf[h + f"layer_norm2.{kind}"]
            out[t + f"mlp.fc1.{kind}"] = hf[h + f"mlp.fc1.{kind}"]
            out[t + f"mlp.fc2.{kind}"] = hf[h + f"mlp.fc2.{kind}"]
    d = VISION["hidden_size"]
    in_w, in_b = hf["head.attention.in_proj_weight"], hf["head.attention.in_proj_bias"]
    out.update({"attn_pool.latent": hf["head.probe"],
                "attn_pool.q.weight": in_w[:d], "attn_pool.q.bias": in_b[:d],
                "attn_pool.kv.weight": in_w[d:], "attn_pool.kv.bias": in_b[d:],
                "attn_pool.proj.weight": hf["head.attention.out_proj.weight"],
                "attn_pool.proj.bias": hf["head.attention.out_proj.bias"],
                "attn_pool.norm.weight": hf["head.layernorm.weight"], "attn_pool.norm.bias": hf["head.layernorm.bias"]})
    for fc in ("fc1", "fc2"):
        out[f"attn_pool.mlp.{fc}.weight"] = hf[f"head.mlp.{fc}.weight"]
        out[f"attn_pool.mlp.{fc}.bias"] = hf[f"head.mlp.{fc}.bias"]
    return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}


def big_vision_from_hf(hf: dict[str, np.ndarray], scanned: bool = False) -> dict[str, np.ndarray]:
    """big_vision `params/img/...` names: the inverse of transformers' convert_siglip_to_hf (kernels [in, out],
    attention kernels [D, H, hd] / [H, hd, D], biases [H, hd], patch kernel HWIO, pos_embedding [1, P, D])."""
    d, heads = VISION["hidden_size"], VISION["num_attention_heads"]
    hd = d // heads
    img = "params/img/"
    out = {img + "embedding/kernel": hf["embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0),
           img + "embedding/bias": hf["embeddings.patch_embedding.bias"],
           img + "pos_embedding": hf["embeddings.position_embedding.weight"][None],
           img + "Transformer/encoder_norm/scale": hf["post_layernorm.weight"],
           img + "Transformer/encoder_norm/bias": hf["post_layernorm.bias"]}

    def attention(w: dict) -> dict:
        a = {"out/kernel": w["ow"].T.reshape(heads, hd, d), "out/bias": w["ob"]}
        for theirs, ours in (("query", "q"), ("key", "k"), ("value", "v")):
            a[f"{theirs}/kernel"] = w[ours + "w"].T.reshape(d, heads, hd)
            a[f"{theirs}/bias"] = w[ours + "b"].reshape(heads, hd)
        return {"MultiHeadDotProductAttention_0/" + k: v for k, v in a.items()}

    blocks = []
    for i in range(VISION["num_hidden_layers"]):
        h, b = f"encoder.layers.{i}.", {}
        b["LayerNorm_0/scale"], b["LayerNorm_0/bias"] = hf[h + "layer_norm1.weight"], hf[h + "layer_norm1.bias"]
        b["LayerNorm_1/scale"], b["LayerNorm_1/bias"] = hf[h + "layer_norm2.weight"], hf[h + "layer_norm2.bias"]
        b["MlpBlock_0/Dense_0/kernel"], b["MlpBlock_0/Dense_0/bias"] = hf[h + "mlp.fc1.weight"].T, hf[h + "mlp.fc1.bias"]
        b["MlpBlock_0/Dense_1/kernel"], b["MlpBlock_0/Dense_1/bias"] = hf[h + "mlp.fc2.weight"].T, hf[h + "mlp.fc2.bias"]
        sa = h + "self_attn."
        w = {p + "w": hf[sa + f"{p}_proj.weight"] for p in "qkv"} | {p + "b": hf[sa + f"{p}_proj.bias"] for p in "qkv"}
        b |= attention(w | {"ow": hf[sa + "out_proj.weight"], "ob": hf[sa + "out_proj.bias"]})
        blocks.append(b)
    if scanned:
        for key in blocks[0]:
            out[img + "Transformer/encoderblock/" + key] = np.stack([blk[key] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({img + f"Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    m = img + "MAPHead_0/"
    in_w, in_b = hf["head.attention.in_proj_weight"], hf["head.attention.in_proj_bias"]
    out |= {m + k: v for k, v in attention({
        "qw": in_w[:d], "kw": in_w[d:2 * d], "vw": in_w[2 * d:], "qb": in_b[:d], "kb": in_b[d:2 * d],
        "vb": in_b[2 * d:], "ow": hf["head.attention.out_proj.weight"], "ob": hf["head.attention.out_proj.bias"]}).items()}
    out.update({m + "probe": hf["head.probe"], m + "LayerNorm_0/scale": hf["head.layernorm.weight"],
                m + "LayerNorm_0/bias": hf["head.layernorm.bias"],
                m + "MlpBlock_0/Dense_0/kernel": hf["head.mlp.fc1.weight"].T,
                m + "MlpBlock_0/Dense_0/bias": hf["head.mlp.fc1.bias"],
                m + "MlpBlock_0/Dense_1/kernel": hf["head.mlp.fc2.weight"].T,
                m + "MlpBlock_0/Dense_1/bias": hf["head.mlp.fc2.bias"],
                "params/txt/Embed_0/embedding": np.zeros((10, 4), np.float32), "params/t": np.zeros(1, np.float32)})
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_torch_state(path: str, state: dict[str, np.ndarray]) -> str:
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    if path.endswith(".safetensors"):
        save_file(tensors, path)
    else:
        torch.save(tensors, path)
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    words = ["True False Yes No " * 40, "You are a helpful assistant.", "Describe the image."]
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")), words, vocab_size=TINY_TOKENIZER_SIZE)


@pytest.fixture(scope="session")
def hf_llm(tmp_path_factory, tiny_tokenizer_dir):
    """(directory, model): a tied tiny Qwen2ForCausalLM saved in 3 safetensors shards, with the tokenizer."""
    model = randomize_(transformers.Qwen2ForCausalLM(hf_qwen2_config(tied=True)).to(torch.float32), seed=0)
    path = str(tmp_path_factory.mktemp("hf_llm"))
    model.save_pretrained(path, max_shard_size="60KB")
    for name in os.listdir(tiny_tokenizer_dir):
        with open(os.path.join(tiny_tokenizer_dir, name), "rb") as src, open(os.path.join(path, name), "wb") as dst:
            dst.write(src.read())
    return path, model


@pytest.fixture(scope="session")
def hf_vision(tmp_path_factory):
    """(directory, model): a tiny SigLIP vision tower with exact GELU (as timm's), MAP head included."""
    model = hf_siglip_vision("gelu")
    path = str(tmp_path_factory.mktemp("hf_vision"))
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def imported_ckpt(tmp_path_factory, hf_llm, hf_vision, tiny_tokenizer_dir) -> str:
    """An oq2vl_jax checkpoint with identity pooling (tokens_per_image = 7x7 patches), as `convert import` writes."""
    imported = importer.import_sources(hf_llm[0], hf_vision[0], tokens_per_image=GRID * GRID, projector_seed=3)
    out = str(tmp_path_factory.mktemp("ckpt") / "ck")
    save_imported(imported, out, tiny_tokenizer_dir)
    return out


def assert_trees_equal(a: dict, b: dict, path: str = "") -> None:
    assert set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
    for key in a:
        if isinstance(a[key], dict):
            assert_trees_equal(a[key], b[key], f"{path}/{key}")
        else:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape, f"{path}/{key}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
            assert np.array_equal(x, y), f"{path}/{key} differs"
