"""A tiny random VLM checkpoint with the demo tokenizer (what `convert import` writes), for end-to-end evaluation
tests through the real inference API."""

from __future__ import annotations

import dataclasses
import os

from oq2vl_jax import checkpoint_io
from oq2vl_jax.demo.shapes import build_tiny_tokenizer
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset


def write_tiny_checkpoint(ckpt_dir: str, tokenizer_dir: str, seed: int = 0) -> str:
    from flax import nnx

    from oq2vl_jax.models.vlm import VLM

    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
        build_tiny_tokenizer(tokenizer_dir)
    config = VLMConfig(vision=vision_preset("siglip-tiny"),
                       llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=1024), tokens_per_image=4)
    model = VLM(config, ModelOptions(), rngs=nnx.Rngs(seed))
    params = nnx.split(model, nnx.Param)[1].to_pure_dict()
    checkpoint_io.save_params(ckpt_dir, params, config, tokenizer_dir=tokenizer_dir)
    return ckpt_dir
