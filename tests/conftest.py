"""Shared test setup: 8 simulated CPU devices (must be set before jax initialises its backend), offline HF."""

import gc
import os
import sys

import pytest

# 8 simulated devices for the mesh tests; XLA:CPU backend optimisation off: compiles are most of the suite's time and
# the tiny test models run in milliseconds either way.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """Frees this process's garbage before an xdist worker reports that it finished.

    After a worker reports, the controller closes its gateway, and execnet sends the worker SIGINT if it is still
    busy 5 s later. pytest's final clean-up runs five full garbage collections, and each one runs JAX's gc callback
    (`jax._src.lib._xla_gc_callback`, freeing XLA buffers and executables); on a loaded 2-core machine that took more
    than 5 s, so the suite ended with a KeyboardInterrupt traceback from inside the collection. Doing the expensive
    collection here, inside xdist's `pytest_sessionfinish` wrapper (after session fixtures are torn down, before
    `workerfinished` is sent), leaves the final collections nothing slow to do.
    """
    if "jax" in sys.modules:
        sys.modules["jax"].clear_caches()
    gc.collect()
