"""Shared test setup: 8 simulated CPU devices (must be set before jax initialises its backend), offline HF."""

import os

# 8 simulated devices for the mesh tests; XLA:CPU backend optimisation off: compiles are most of the suite's time and
# the tiny test models run in milliseconds either way.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
