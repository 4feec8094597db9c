"""oq2vl_jax -> prismatic run directory -> oq2vl_jax: strict loading into the reference's module names, bit-exact."""

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from fixtures.convert import (GRID, VISION, assert_trees_equal, hf_llm, hf_qwen2_config, hf_vision,  # noqa: F401
                              hf_vision_state, imported_ckpt, timm_state_from_hf, tiny_tokenizer_dir)
from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert import exporter, prismatic
from oq2vl_jax.errors import UserError


class _Named(torch.nn.Module):
    def __init__(self, **children):
        super().__init__()
        for name, child in children.items():
            if isinstance(child, torch.nn.Parameter):
                self.register_parameter(name, child)
            else:
                self.add_module(name, child)


def _linear(i, o):
    return torch.nn.Linear(i, o)


def reference_timm_featurizer() -> torch.nn.Module:
    """The module tree of timm's vit_so400m_patch14_siglip_384 (key names: reference_notes.md §9), at the tiny size."""
    d, f, p, n = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"], GRID * GRID
    mlp = lambda: _Named(fc1=_linear(d, f), fc2=_linear(f, d))
    blocks = torch.nn.ModuleList([
        _Named(norm1=torch.nn.LayerNorm(d), attn=_Named(qkv=_linear(d, 3 * d), proj=_linear(d, d)),
               norm2=torch.nn.LayerNorm(d), mlp=mlp()) for _ in range(VISION["num_hidden_layers"])])
    attn_pool = _Named(latent=torch.nn.Parameter(torch.zeros(1, 1, d)), q=_linear(d, d), kv=_linear(d, 2 * d),
                       proj=_linear(d, d), norm=torch.nn.LayerNorm(d), mlp=mlp())
    return _Named(patch_embed=_Named(proj=torch.nn.Conv2d(3, d, p, p)), pos_embed=torch.nn.Parameter(
        torch.zeros(1, n, d)), blocks=blocks, norm=torch.nn.LayerNorm(d), attn_pool=attn_pool)


def reference_vlm(with_vision: bool) -> torch.nn.Module:
    parts = {"projector": _Named(mlp_projector=torch.nn.Sequential(_linear(32, 64), torch.nn.GELU(), _linear(64, 64))),
             "llm_backbone": _Named(llm=transformers.Qwen2ForCausalLM(hf_qwen2_config(tied=True)))}
    if with_vision:
        parts["vision_backbone"] = _Named(featurizer=reference_timm_featurizer())
    return _Named(**parts)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, imported_ckpt):
    out = str(tmp_path_factory.mktemp("prismatic") / "run")
    exporter.export(imported_ckpt, "prismatic", out, with_vision=True)
    return out


def test_strict_load_into_reference_names(exported, imported_ckpt, hf_llm, hf_vision):
    state = torch.load(os.path.join(exported, "checkpoints", "latest-checkpoint.pt"), map_location="cpu",
                       weights_only=True)["model"]
    assert list(state) == ["vision_backbone", "projector", "llm_backbone"]
    assert all(t.dtype == torch.float32 for sd in state.values() for t in sd.values())
    model = reference_vlm(with_vision=True)
    for name, module in model.named_children():
        module.load_state_dict(state[name], strict=True)
    # every tensor equals its source: the HF LLM, the tower in timm naming (mapped independently), our projector
    llm_source = hf_llm[1].state_dict()
    for name, tensor in model.llm_backbone.llm.state_dict().items():
        assert torch.equal(tensor, llm_source[name]), name
    timm_source = timm_state_from_hf(hf_vision_state(hf_vision[1]))
    featurizer = model.vision_backbone.featurizer.state_dict()
    assert set(featurizer) == set(timm_source)
    for name, array in timm_source.items():
        assert np.array_equal(featurizer[name].numpy(), array), name
    _, params, _ = checkpoint_io.load_params(imported_ckpt)
    for i, ours in ((0, "fc1"), (2, "fc2")):
        linear = model.projector.mlp_projector[i]
        assert np.array_equal(linear.weight.detach().numpy(), params["projector"][ours]["kernel"].T)
        assert np.array_equal(linear.bias.detach().numpy(), params["projector"][ours]["bias"])
    assert state["llm_backbone"]["llm.lm_head.weight"].data_ptr() == \
        state["llm_backbone"]["llm.model.embed_tokens.weight"].data_ptr()  # tied: one storage, as the reference


def test_config_json(exported):
    run = json.load(open(os.path.join(exported, "config.json")))
    assert run["mount_path"] == "Qwen"
    assert run["model"]["arch_specifier"] == "full-align+49-avgpool"
    assert run["model"]["vision_backbone_id"] == "siglip-vit-so400m-384px"
    assert run["model"]["image_resize_strategy"] == "resize-naive" and run["model"]["llm_max_length"] == 4096
    assert prismatic.arch_specifier(144) == "no-align+avgpool"
    assert prismatic.tokens_from_arch("no-align+avgpool") == 144
    assert prismatic.tokens_from_arch("full-align+729-avgpool") == 729
    with pytest.raises(UserError, match="not an average-pool projector"):
        prismatic.tokens_from_arch("no-align+gelu-mlp")


def test_round_trip_bit_exact(tmp_path, exported, imported_ckpt):
    imported = prismatic.read(exported)
    _, params, _ = checkpoint_io.load_params(imported_ckpt)
    assert_trees_equal(imported.params, params)
    assert_trees_equal(imported.vision_extra, checkpoint_io.load_item(imported_ckpt, checkpoint_io.VISION_EXTRA))
    assert imported.config == checkpoint_io.load_params(imported_ckpt)[0]


def test_released_layout_without_vision(tmp_path, imported_ckpt, hf_llm, hf_vision):
    """A released-style directory: no vision_backbone, no oq2vl_jax.json; sizes from --llm, tower from --vision."""
    out = str(tmp_path / "run")
    exporter.export(imported_ckpt, "prismatic", out, dtype="bf16")
    os.remove(os.path.join(out, prismatic.OUR_CONFIG))
    shutil.rmtree(os.path.join(out, "tokenizer"))
    state = torch.load(os.path.join(out, prismatic.CHECKPOINT), weights_only=True)["model"]
    assert set(state) == {"projector", "llm_backbone"}
    assert state["projector"]["mlp_projector.0.weight"].dtype == torch.bfloat16
    with pytest.raises(UserError, match="no vision_backbone"):
        prismatic.read(out, llm_dir=hf_llm[0])
    with pytest.raises(UserError, match=r"embed_tokens.weight' has shape \(512, 64\).*pass --llm DIR"):
        prismatic.read(out, vision_src=hf_vision[0])
    imported = prismatic.read(out, llm_dir=hf_llm[0], vision_src=hf_vision[0])
    _, params, _ = checkpoint_io.load_params(imported_ckpt)
    assert imported.config.tokens_per_image == 49
    assert_trees_equal(imported.params["vision"], params["vision"])
    bf16 = lambda a: np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert np.array_equal(imported.params["llm"]["embed"], bf16(params["llm"]["embed"]))


def test_with_vision_needs_the_unrun_parts(tmp_path, imported_ckpt):
    config, params, _ = checkpoint_io.load_params(imported_ckpt)
    with pytest.raises(UserError, match="pass --vision SRC"):
        prismatic.export(str(tmp_path / "x"), config, params, None, dtype=np.float32, with_vision=True,
                         tokenizer_dir=None)
