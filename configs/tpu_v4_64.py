"""The paper's pre-training recipe (configs/a100x8.py) on a TPU v4-64 slice: 32 chips (one JAX device each) on 8
hosts, 32 GiB HBM per chip. FSDP over all 32 chips, splash attention, 2 rows per chip per micro-batch.

Launch with launch/tpu_pod.sh (the same command on every host; jax.distributed finds the pod by itself)."""

import os
import runpy

import ml_collections

a100x8 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a100x8.py"))


def get_config() -> ml_collections.ConfigDict:
    c = a100x8["get_config"]()
    c.distributed = "on"
    c.train.micro_batches = 4                  # 256 rows / 32 chips / 4 = 2 rows per chip per micro-batch
    c.data.worker_count = 8                    # per host: 4 chips
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.hardware.update(num_devices=32, device_memory_gib=32.0, target="v4-64")
    return c
