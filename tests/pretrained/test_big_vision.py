"""big_vision `.npz` SigLIP weights (per-block and scanned) give the same parameters as the HF-named source."""

import dataclasses

import numpy as np
import pytest

from fixtures.convert import assert_trees_equal, big_vision_from_hf, hf_vision, hf_vision_state  # noqa: F401
from oq2vl_jax.pretrained import importer
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH


@pytest.mark.parametrize("scanned", [False, True])
def test_big_vision_matches_hf(tmp_path, hf_vision, scanned):
    path = str(tmp_path / "siglip.npz")
    np.savez(path, **big_vision_from_hf(hf_vision_state(hf_vision[1]), scanned=scanned))
    cfg, vision, extra, kind = importer.load_vision(path)
    ref_cfg, ref_vision, ref_extra, _ = importer.load_vision(hf_vision[0])
    assert kind == "big_vision" and cfg.hidden_act == GELU_TANH and ref_cfg.hidden_act == GELU_EXACT
    assert cfg == dataclasses.replace(ref_cfg, hidden_act=GELU_TANH)  # heads read from the [D, H, hd] kernels
    assert_trees_equal(vision, ref_vision)
    assert_trees_equal(extra, ref_extra)


def test_big_vision_shape_error_names_tensor(tmp_path, hf_vision):
    arrays = big_vision_from_hf(hf_vision_state(hf_vision[1]))
    key = "params/img/Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel"
    arrays[key] = arrays[key][:40]
    path = str(tmp_path / "bad.npz")
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=r"encoderblock_1/MlpBlock_0/Dense_1/kernel.*\(40, 32\).*\(48, 32\)"):
        importer.load_vision(path)
