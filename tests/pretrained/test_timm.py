"""timm / open_clip-named SigLIP weights give the same parameters as the HF-named source of the same tensors."""

import json

import numpy as np
import pytest

from fixtures.convert import (assert_trees_equal, hf_vision, hf_vision_state, save_torch_state,  # noqa: F401
                              timm_state_from_hf)
from oq2vl_jax.pretrained import hf, importer, timm
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT


@pytest.fixture(scope="module")
def hf_reference(hf_vision):
    return importer.load_vision(hf_vision[0])


@pytest.mark.parametrize("fmt, prefix", [(".safetensors", ""), (".bin", "visual.trunk.")])
def test_timm_matches_hf(tmp_path, hf_vision, hf_reference, fmt, prefix):
    path = save_torch_state(str(tmp_path / f"weights{fmt}"), timm_state_from_hf(hf_vision_state(hf_vision[1]), prefix))
    cfg, vision, extra, kind = importer.load_vision(path, overrides={"num_heads": 4})
    ref_cfg, ref_vision, ref_extra, _ = hf_reference
    assert kind == "timm" and cfg == ref_cfg and cfg.hidden_act == GELU_EXACT
    assert (cfg.width, cfg.depth, cfg.mlp_dim, cfg.patch_size, cfg.image_size) == (32, 3, 48, 4, 28)
    assert_trees_equal(vision, ref_vision)
    assert_trees_equal(extra, ref_extra)
    assert set(extra) == {"blocks", "norm", "head"}


def test_timm_export_reproduces_the_state_dict(hf_vision, hf_reference):
    _, vision, extra, _ = hf_reference
    state = timm_state_from_hf(hf_vision_state(hf_vision[1]), "featurizer.")
    written = dict(timm.vision_to_timm(vision, extra, "featurizer."))
    assert set(written) == set(state)
    for name, array in state.items():
        assert np.array_equal(written[name], array), name


def test_sizes_from_shapes_and_sibling_config(tmp_path, hf_vision):
    folder = tmp_path / "openclip"
    folder.mkdir()
    save_torch_state(str(folder / "open_clip_model.safetensors"), timm_state_from_hf(hf_vision_state(hf_vision[1]),
                                                                                      "visual.trunk."))
    json.dump({"model_cfg": {"vision_cfg": {"image_size": 30}}}, open(folder / "open_clip_config.json", "w"))
    cfg, _, _, _ = importer.load_vision(str(folder), overrides={"num_heads": 4, "feature_layer": -1})
    assert cfg.image_size == 30 and cfg.grid == 7 and cfg.num_blocks_run == 3
    assert hf.siglip_image_size(14, 27) == 384 and hf.siglip_image_size(16, 24) == 384


def test_timm_errors(tmp_path, hf_vision):
    state = timm_state_from_hf(hf_vision_state(hf_vision[1]))
    path = save_torch_state(str(tmp_path / "w.safetensors"), state)
    with pytest.raises(UserError, match="attention heads of a width-32 tower"):
        importer.load_vision(path)
    with pytest.raises(UserError, match="contradicts the weights"):
        importer.load_vision(path, overrides={"num_heads": 4, "width": 64})
    with pytest.raises(UserError, match="patch grid"):
        importer.load_vision(path, overrides={"num_heads": 4, "image_size": 40})
    bad = dict(state, **{"blocks.1.attn.qkv.weight": state["blocks.1.attn.qkv.weight"][:90]})
    path = save_torch_state(str(tmp_path / "bad.safetensors"), bad)
    with pytest.raises(UserError, match=r"blocks.1.attn.qkv.weight' has shape \(90, 32\)"):
        importer.load_vision(path, overrides={"num_heads": 4})
    unknown = save_torch_state(str(tmp_path / "other.safetensors"), {"conv.weight": np.zeros((2, 2), np.float32)})
    with pytest.raises(UserError, match="unknown vision weight layout"):
        importer.load_vision(unknown)
