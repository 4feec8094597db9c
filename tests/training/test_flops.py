"""The FLOP formula of training/flops.py: the published per-row anchor, stage factors, peaks and MFU."""

import pytest

from oq2vl_jax.models.presets import open_qwen2vl
from oq2vl_jax.training import flops

ROW = dict(real_tokens=4096, causal_pairs=4096 * 4097 / 2, num_images=25)  # one reference row: 25 images x 144


def test_reference_row_is_58_4_tflop():
    # docs/reference_notes.md §11: 6N trained matmuls (lm_head in, embedding out), causal attention over the whole
    # row, 2N per patch for the 26 vision blocks run, projector: 58.4 TFLOP per row
    config = open_qwen2vl()
    assert flops.llm_matmul_params(config) == 1_543_569_408
    assert config.vision.num_blocks_run == 26
    assert flops.step_flops(config, ("projector", "llm"), ROW) / 1e12 == pytest.approx(58.4, abs=0.05)


def test_stage_factors():
    config = open_qwen2vl()
    pretrain = flops.step_flops(config, ("projector", "llm"), ROW)
    align = flops.step_flops(config, ("projector",), ROW)
    full = flops.step_flops(config, ("vision", "projector", "llm"), ROW)
    assert pretrain - align == pytest.approx(2 * flops.llm_matmul_params(config) * 4096)
    assert full - pretrain == pytest.approx(25 * 2 * flops.vision_flops_per_image(config)
                                            + 25 * (flops.projector_flops_per_image(config, True)
                                                    - flops.projector_flops_per_image(config, False)))
    # attention is counted from the causal pairs of the documents actually packed
    packed = dict(ROW, causal_pairs=25 * 164 * 165 / 2)
    assert flops.step_flops(config, ("projector", "llm"), packed) < pretrain


def test_peaks_and_mfu():
    assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops_per_device("NVIDIA A100-SXM4-40GB") == 312e12
    assert flops.peak_flops_per_device("TPU v5 lite") == 197e12
    assert flops.peak_flops_per_device("TPU v5p") == 459e12
    assert flops.peak_flops_per_device("TPU v4") == 275e12
    assert flops.peak_flops_per_device("cpu") is None
    assert flops.peak_flops_per_device("cpu", override_tflops=1.5) == 1.5e12
    assert flops.mfu(989e12 * 8 * 0.5, 1.0, 8, 989e12) == pytest.approx(0.5)
    assert flops.mfu(1.0, 1.0, 8, None) is None
