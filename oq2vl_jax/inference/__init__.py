"""Inference: prompt building (prompts.py), the jitted prefill + on-device decode loop (sampler.py), and the load-once
API (api.py: `VLMInference`). Never imports training."""

from oq2vl_jax.inference.api import Generation, VLMInference  # noqa: F401
