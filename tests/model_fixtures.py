"""Tiny random PyTorch reference models (transformers) and their weights copied into our parameter trees."""

from __future__ import annotations

import numpy as np
import torch
import transformers

from oq2vl_jax.pretrained import hf
from oq2vl_jax.models.presets import GELU_EXACT, GELU_TANH, Qwen2Config, SiglipConfig

HF_ACT = {GELU_EXACT: "gelu", GELU_TANH: "gelu_pytorch_tanh"}


def randomize_(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Every parameter random (HF inits biases to zero and norms to one, which would hide mapping bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * scale
            p.copy_(1.0 + noise if ("norm" in name and name.endswith("weight")) else noise)
    return module.eval()


def tiny_qwen2_config(tied: bool) -> Qwen2Config:
    return Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                       num_kv_heads=2, head_dim=16, rope_theta=1e6, tie_word_embeddings=tied)


def hf_qwen2_config(cfg: Qwen2Config) -> transformers.Qwen2Config:
    return transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=cfg.tie_word_embeddings, max_position_embeddings=4096, attn_implementation="eager")


def hf_qwen2_meta(cfg: Qwen2Config) -> transformers.Qwen2ForCausalLM:
    return transformers.Qwen2ForCausalLM(hf_qwen2_config(cfg))


def hf_qwen2(cfg: Qwen2Config, seed: int = 0) -> transformers.Qwen2ForCausalLM:
    model = transformers.Qwen2ForCausalLM(hf_qwen2_config(cfg)).to(torch.float32)
    return randomize_(model, seed)


def tiny_siglip_config(act: str = GELU_EXACT, image_size: int = 28) -> SiglipConfig:
    return SiglipConfig(width=32, depth=3, mlp_dim=48, num_heads=4, patch_size=4, image_size=image_size,
                        hidden_act=act)


def hf_siglip(cfg: SiglipConfig, seed: int = 1) -> transformers.SiglipVisionModel:
    hf_cfg = transformers.SiglipVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads, image_size=cfg.image_size, patch_size=cfg.patch_size,
        hidden_act=HF_ACT[cfg.hidden_act], layer_norm_eps=cfg.layer_norm_eps, attn_implementation="eager")
    return randomize_(transformers.SiglipVisionModel(hf_cfg).to(torch.float32), seed)


def getter(module: torch.nn.Module):
    state = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return lambda name: state[name]


def qwen2_tree(model: transformers.Qwen2ForCausalLM, cfg: Qwen2Config) -> dict:
    return hf.qwen2_from_hf(getter(model), cfg)


def siglip_tree(model: transformers.SiglipVisionModel, cfg: SiglipConfig) -> dict:
    # transformers 5 keeps SiglipVisionModel's weights unprefixed in memory (files on the hub say "vision_model.")
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in model.state_dict()) else ""
    return hf.siglip_from_hf(getter(model), cfg, prefix=prefix)


class TorchProjector(torch.nn.Module):
    """The reference's AvgPoolProjector: AdaptiveAvgPool2d on the patch grid, then Linear -> GELU -> Linear."""

    def __init__(self, vision_width: int, llm_width: int, pool: int, seed: int = 2):
        super().__init__()
        self.pool = torch.nn.AdaptiveAvgPool2d((pool, pool))
        self.mlp_projector = torch.nn.Sequential(torch.nn.Linear(vision_width, llm_width), torch.nn.GELU(),
                                                 torch.nn.Linear(llm_width, llm_width))
        randomize_(self, seed)

    def forward(self, x):  # [N, g*g, D]
        n, t, d = x.shape
        g = int(round(t ** 0.5))
        grid = x.transpose(1, 2).reshape(n, d, g, g)
        pooled = self.pool(grid).flatten(2).transpose(1, 2)
        return self.mlp_projector(pooled)


def projector_tree(proj: TorchProjector) -> dict:
    return hf.projector_from_torch(getter(proj), prefix="mlp_projector.")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).numpy()
