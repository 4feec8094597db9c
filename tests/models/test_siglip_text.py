"""Two-tower SigLIP scores against transformers.SiglipModel (fp32), and the import of both towers from HF,
big_vision `.npz` and open_clip names (bit-exact trees). Foreign namings are built here from the HF tensors with
mappings written from big_vision's / open_clip's module names, independently of the importer."""

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from fixtures.convert import (VISION, assert_trees_equal, big_vision_from_hf, save_torch_state,
                              timm_state_from_hf)
from fixtures.model import randomize_
from oq2vl_jax.pretrained import siglip_pair
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH, PAIR_PRESETS, ModelOptions
from oq2vl_jax.models.siglip_text import SiglipPair

TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=8, projection_size=32, layer_norm_eps=1e-6)


def hf_pair(act: str, seed: int = 5) -> transformers.SiglipModel:
    cfg = transformers.SiglipConfig(text_config=dict(TEXT, hidden_act=act),
                                    vision_config=dict(VISION, hidden_act=act))
    cfg._attn_implementation = "eager"
    return randomize_(transformers.SiglipModel(cfg).to(torch.float32), seed)


@pytest.fixture(scope="module", params=["gelu", "gelu_pytorch_tanh"])
def hf_pair_dir(request, tmp_path_factory):
    model = hf_pair(request.param)
    path = str(tmp_path_factory.mktemp("siglip_pair"))
    model.save_pretrained(path)
    return path, model


def state(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _ours(cfg, tree):
    return P.load_params(nnx.eval_shape(lambda: SiglipPair(cfg, ModelOptions(), rngs=nnx.Rngs(0))), tree)


def test_logits_match_siglip_model(hf_pair_dir):
    path, model = hf_pair_dir
    cfg, tree, kind = siglip_pair.load_pair(path)
    assert kind == "HF SiglipModel" and cfg.vision.num_blocks_run == VISION["num_hidden_layers"]
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, size=(3, 28, 28, 3)).astype(np.float32)
    ids = rng.integers(0, TEXT["vocab_size"], size=(4, TEXT["max_position_embeddings"]))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2))
    want = out.logits_per_image.numpy()
    assert np.abs(want).max() > 1e-2  # a real signal, not an all-zero comparison
    ours = _ours(cfg, tree)
    got = np.asarray(jax.jit(lambda m, x, t: m.logits(x, t))(ours, pixels, ids))
    assert got.shape == (3, 4) and np.abs(got - want).max() <= 1e-4
    diag = np.asarray(jax.jit(lambda m, x, t: m.pair_scores(x, t))(ours, pixels, ids[:3]))
    np.testing.assert_allclose(diag, np.diag(want[:, :3]), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.embed_images(pixels)), torch.nn.functional.normalize(
        out.image_embeds, dim=-1).numpy(), atol=1e-5)


def big_vision_text_from_hf(hf: dict[str, np.ndarray], scanned: bool) -> dict[str, np.ndarray]:
    d, heads = TEXT["hidden_size"], TEXT["num_attention_heads"]
    hd = d // heads
    txt = "params/txt/"
    out = {txt + "Embed_0/embedding": hf["text_model.embeddings.token_embedding.weight"],
           txt + "pos_embedding": hf["text_model.embeddings.position_embedding.weight"][None],
           txt + "Encoder_0/encoder_norm/scale": hf["text_model.final_layer_norm.weight"],
           txt + "Encoder_0/encoder_norm/bias": hf["text_model.final_layer_norm.bias"],
           txt + "head/kernel": hf["text_model.head.weight"].T, txt + "head/bias": hf["text_model.head.bias"],
           "params/t": hf["logit_scale"].reshape(1), "params/b": hf["logit_bias"].reshape(1)}
    blocks = []
    for i in range(TEXT["num_hidden_layers"]):
        h, b = f"text_model.encoder.layers.{i}.", {}
        b["LayerNorm_0/scale"], b["LayerNorm_0/bias"] = hf[h + "layer_norm1.weight"], hf[h + "layer_norm1.bias"]
        b["LayerNorm_1/scale"], b["LayerNorm_1/bias"] = hf[h + "layer_norm2.weight"], hf[h + "layer_norm2.bias"]
        b["MlpBlock_0/Dense_0/kernel"], b["MlpBlock_0/Dense_0/bias"] = hf[h + "mlp.fc1.weight"].T, hf[h + "mlp.fc1.bias"]
        b["MlpBlock_0/Dense_1/kernel"], b["MlpBlock_0/Dense_1/bias"] = hf[h + "mlp.fc2.weight"].T, hf[h + "mlp.fc2.bias"]
        a = "MultiHeadDotProductAttention_0/"
        for theirs, p in (("query", "q"), ("key", "k"), ("value", "v")):
            b[a + theirs + "/kernel"] = hf[h + f"self_attn.{p}_proj.weight"].T.reshape(d, heads, hd)
            b[a + theirs + "/bias"] = hf[h + f"self_attn.{p}_proj.bias"].reshape(heads, hd)
        b[a + "out/kernel"] = hf[h + "self_attn.out_proj.weight"].T.reshape(heads, hd, d)
        b[a + "out/bias"] = hf[h + "self_attn.out_proj.bias"]
        blocks.append(b)
    if scanned:
        out.update({txt + "Encoder_0/encoderblock/" + k: np.stack([blk[k] for blk in blocks]) for k in blocks[0]})
    else:
        for i, blk in enumerate(blocks):
            out.update({txt + f"Encoder_0/encoderblock_{i}/{k}": v for k, v in blk.items()})
    return out


def open_clip_text_from_hf(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {"text.token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
           "text.positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
           "text.ln_final.weight": hf["text_model.final_layer_norm.weight"],
           "text.ln_final.bias": hf["text_model.final_layer_norm.bias"],
           "text.text_projection.weight": hf["text_model.head.weight"],
           "text.text_projection.bias": hf["text_model.head.bias"],
           "logit_scale": hf["logit_scale"], "logit_bias": hf["logit_bias"]}
    for i in range(TEXT["num_hidden_layers"]):
        h, o = f"text_model.encoder.layers.{i}.", f"text.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[o + f"attn.in_proj_{kind}"] = np.concatenate([hf[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[o + f"attn.out_proj.{kind}"] = hf[h + f"self_attn.out_proj.{kind}"]
            out[o + f"ln_1.{kind}"], out[o + f"ln_2.{kind}"] = hf[h + f"layer_norm1.{kind}"], hf[h + f"layer_norm2.{kind}"]
            out[o + f"mlp.c_fc.{kind}"], out[o + f"mlp.c_proj.{kind}"] = hf[h + f"mlp.fc1.{kind}"], hf[h + f"mlp.fc2.{kind}"]
    return out


def vision_only(hf: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("vision_model."): v for k, v in hf.items() if k.startswith("vision_model.")}


@pytest.mark.parametrize("scanned", [False, True])
def test_big_vision_pair_matches_hf(tmp_path, scanned):
    model = hf_pair("gelu_pytorch_tanh")
    hf_state = state(model)
    arrays = {k: v for k, v in big_vision_from_hf(vision_only(hf_state)).items() if k.startswith("params/img/")}
    arrays |= big_vision_text_from_hf(hf_state, scanned)
    np.savez(tmp_path / "siglip.npz", **arrays)
    model.save_pretrained(tmp_path / "hf")
    cfg, tree, kind = siglip_pair.load_pair(str(tmp_path / "siglip.npz"))
    ref_cfg, ref_tree, _ = siglip_pair.load_pair(str(tmp_path / "hf"))
    assert kind == "big_vision" and cfg == ref_cfg
    assert_trees_equal(tree, ref_tree)


def test_open_clip_pair_matches_hf(tmp_path):
    model = hf_pair("gelu")
    hf_state = state(model)
    arrays = timm_state_from_hf(vision_only(hf_state), prefix="visual.trunk.") | open_clip_text_from_hf(hf_state)
    folder = tmp_path / "oc"
    folder.mkdir()
    save_torch_state(str(folder / "open_clip_model.safetensors"), arrays)
    (folder / "open_clip_config.json").write_text('{"model_cfg": {"text_cfg": {"heads": 4}, '
                                                  '"vision_cfg": {"image_size": 28}}}')
    model.save_pretrained(tmp_path / "hf")
    cfg, tree, kind = siglip_pair.load_pair(str(folder), vision_heads=4)
    ref_cfg, ref_tree, _ = siglip_pair.load_pair(str(tmp_path / "hf"))
    assert kind == "open_clip" and cfg == ref_cfg and cfg.text.hidden_act == GELU_EXACT
    assert_trees_equal(tree, ref_tree)


def test_missing_map_head_is_one_line(tmp_path):
    model = hf_pair("gelu_pytorch_tanh")
    arrays = {k: v for k, v in big_vision_from_hf(vision_only(state(model))).items()
              if k.startswith("params/img/") and "MAPHead" not in k}
    arrays |= big_vision_text_from_hf(state(model), False)
    np.savez(tmp_path / "nohead.npz", **arrays)
    with pytest.raises(UserError, match="MAP"):
        siglip_pair.load_pair(str(tmp_path / "nohead.npz"))


def test_text_tower_checks_length():
    pair = PAIR_PRESETS["siglip-tiny-pair"]
    assert pair.vision.hidden_act == GELU_TANH
    model = nnx.eval_shape(lambda: SiglipPair(pair, ModelOptions(), rngs=nnx.Rngs(0)))  # the check precedes compute
    with pytest.raises(ValueError, match="exactly 16 tokens"):
        model.text(np.zeros((1, 5), np.int32))
