"""SigLIP tower parity with transformers.SiglipVisionModel hidden_states[-2] in float32, both GELU kinds."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from fixtures.model import hf_siglip, siglip_tree, tiny_siglip_config, to_numpy
from oq2vl_jax.models import params as P
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH, ModelOptions, vision_preset
from oq2vl_jax.models.siglip import SiglipTower


def _ours(cfg, tree):
    return P.load_params(nnx.eval_shape(lambda: SiglipTower(cfg, ModelOptions(), rngs=nnx.Rngs(0))), tree)


@pytest.mark.parametrize("act,image_size", [(GELU_EXACT, 28), (GELU_TANH, 28), (GELU_EXACT, 31)])
def test_features_match_hidden_states_minus_2(act, image_size):
    """image_size 31 with patch 4: the convolution never sees the last 3 rows/columns, as in timm/HF."""
    cfg = tiny_siglip_config(act, image_size)
    ref = hf_siglip(cfg)
    pixels = np.random.default_rng(0).uniform(-1, 1, size=(3, image_size, image_size, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    want = to_numpy(out.hidden_states[-2])
    got = np.asarray(jax.jit(lambda m, x: m(x))(_ours(cfg, siglip_tree(ref, cfg)), pixels))
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_feature_layer_selects_block_and_builds_no_more():
    cfg = dataclasses.replace(tiny_siglip_config(), feature_layer=0)
    ref = hf_siglip(dataclasses.replace(cfg, feature_layer=-2))
    model = _ours(cfg, siglip_tree(ref, cfg))
    assert nnx.state(model.blocks, nnx.Param)["q"]["kernel"].shape[0] == 1
    pixels = np.random.default_rng(1).uniform(-1, 1, size=(1, 28, 28, 3)).astype(np.float32)
    with torch.no_grad():
        out = ref(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    np.testing.assert_allclose(np.asarray(model(pixels)), to_numpy(out.hidden_states[1]), atol=1e-4)


def test_so400m_parameter_count_matches_hf_minus_unbuilt_parts():
    """HF So400m on the meta device, minus what we do not build: the last block, post_layernorm and the MAP head."""
    cfg = vision_preset("siglip-so400m-384")
    model = nnx.eval_shape(lambda: SiglipTower(cfg, ModelOptions(), rngs=nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    hf_cfg = transformers.SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                             num_attention_heads=16, image_size=384, patch_size=14)
    with torch.device("meta"):
        ref = transformers.SiglipVisionModel(hf_cfg)
    skipped = (f"encoder.layers.{cfg.depth - 1}.", "post_layernorm.", "head.")
    names = {n.removeprefix("vision_model."): p.numel() for n, p in ref.named_parameters()}
    assert any(n.startswith("head.") for n in names)  # the skip list really matches HF's names
    theirs = sum(size for n, size in names.items() if not n.startswith(skipped))
    assert ours == theirs
    assert cfg.num_patches == 729 and cfg.num_blocks_run == 26
