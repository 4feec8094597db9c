"""Model FLOPs per train step and MFU.

Counted per global step from the step's counts (training/step.py `flop_counts`): real tokens n (non-padding positions,
image positions included), causal pairs P = sum over documents of len*(len+1)/2 (with reference_compat, a row is one
document), and valid images I. Model FLOPs, not hardware FLOPs: remat recomputation, padding and the vision slots a
chunk computes without a valid image are not counted. A multiply-add is 2 FLOPs.

Decoder (D hidden, H query / K kv heads of size hd, F mlp, V vocab, layers Ld):
  N_llm = Ld * (D*hd*(2H + 2K) + 3*D*F) + V*D         matmul weights per token, lm_head included, embedding lookup not
  matmuls:    c_llm * N_llm * n      c_llm = 6 when the decoder trains (2 forward + 2 activation grads + 2 weight
                                     grads), 4 when it is frozen (align: gradients still flow through it to the
                                     projector)
  attention:  3 * 4*H*hd * P * Ld    (QK^T and AV, 2*2*H*hd per causal pair; forward + backward)

Vision tower (W width, Fv mlp, p patch, g = grid, g^2 patches, B blocks actually run = feature_layer + 1):
  per image:  c_vis * (2*g^2*(3*p^2*W + B*(4*W^2 + 2*W*Fv)) + B*4*W*g^4)
              c_vis = 1 when frozen (forward only), 3 when it trains (full stage)

Projector (adaptive pool g x g -> q x q, T = q^2 tokens, then Linear W->D, GELU, Linear D->D), per image:
  pool:       c_vis * 2*W*(q*g^2 + q^2*g)   (separable pooling matrices; its backward only matters if vision trains)
  mlp:        6 * T * (W*D + D*D)           (always trained)

MFU = FLOPs / (step seconds * devices * peak FLOP/s per device), peak = bf16 dense from the device kind or
`hardware.peak_tflops`.
"""

from __future__ import annotations

from typing import Mapping

from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.training.targets import kind_hardware

def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """bf16 dense datasheet peak of a jax device_kind (training/targets.py HARDWARE), or `hardware.peak_tflops`."""
    if override_tflops > 0:
        return override_tflops * 1e12
    return kind_hardware(device_kind).peak_flops or None


def llm_matmul_params(config: VLMConfig) -> int:
    c = config.llm
    attention = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    per_layer = attention + 3 * c.hidden_size * c.intermediate_size
    return c.num_layers * per_layer + c.vocab_size * c.hidden_size


def vision_flops_per_image(config: VLMConfig) -> float:
    """Forward FLOPs of the tower for one image (patch embedding + the blocks run)."""
    v = config.vision
    patches = v.grid * v.grid
    per_patch = 3 * v.patch_size ** 2 * v.width + v.num_blocks_run * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim)
    attention = v.num_blocks_run * 4 * v.width * patches ** 2
    return 2.0 * patches * per_patch + attention


def projector_flops_per_image(config: VLMConfig, vision_trains: bool) -> float:
    g, q, w, d = config.vision.grid, config.pool_size, config.vision.width, config.llm.hidden_size
    pool = 0.0 if q == g else 2.0 * w * (q * g * g + q * q * g)
    return (3 if vision_trains else 1) * pool + 6.0 * config.tokens_per_image * (w * d + d * d)


def step_flops(config: VLMConfig, trained: tuple[str, ...], counts: Mapping[str, float]) -> float:
    """Model FLOPs of one train step. trained: the towers that train (training/state.py STAGES);
    counts: real_tokens, causal_pairs, num_images."""
    c = config.llm
    llm_factor = 6.0 if "llm" in trained else 4.0
    vision_trains = "vision" in trained
    llm = llm_factor * llm_matmul_params(config) * counts["real_tokens"]
    attention = 3.0 * 4.0 * c.num_heads * c.head_dim * counts["causal_pairs"] * c.num_layers
    images = counts["num_images"] * ((3.0 if vision_trains else 1.0) * vision_flops_per_image(config)
                                     + projector_flops_per_image(config, vision_trains))
    return llm + attention + images


def mfu(flops: float, seconds: float, num_devices: int, peak_per_device: float | None) -> float | None:
    if not peak_per_device or seconds <= 0:
        return None
    return flops / (seconds * num_devices * peak_per_device)
