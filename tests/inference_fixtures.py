"""A tiny random VLM + tokenizer loaded into `VLMInference` (float32, CPU), shared by the inference tests."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from oq2vl_jax.demo.shapes import build_tiny_tokenizer
from oq2vl_jax.inference import VLMInference
from oq2vl_jax.models import params as params_lib
from oq2vl_jax.models.presets import VLMConfig, llm_preset, vision_preset
from oq2vl_jax.models.vlm import VLM


def tiny_config(tokens_per_image: int) -> VLMConfig:
    """siglip-tiny (7x7 patches): 4 tokens per image = pooled (the 144-token kind), 49 = identity (the 729 kind)."""
    return VLMConfig(vision=vision_preset("siglip-tiny"),
                     llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=800), tokens_per_image=tokens_per_image)


def tiny_inference(tokenizer_dir: str, tokens_per_image: int, seed: int = 0, **kwargs) -> VLMInference:
    config = tiny_config(tokens_per_image)
    tree = jax.tree.map(np.asarray, params_lib.param_tree(VLM(config, rngs=nnx.Rngs(seed))))
    return VLMInference(config, tree, tokenizer_dir, compute_dtype="float32", **kwargs)


def tiny_tokenizer(path: str) -> str:
    return build_tiny_tokenizer(path)


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (20 + 7 * i, 30, 3)).astype(np.uint8) for i in range(n)]
