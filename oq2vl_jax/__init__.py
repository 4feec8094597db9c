"""oq2vl_jax: a JAX/Flax NNX reimplementation of Open-Qwen2VL (arXiv 2504.00595)."""

__version__ = "0.1.0"
