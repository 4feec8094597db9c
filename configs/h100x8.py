"""The paper's pre-training recipe (configs/a100x8.py) on one node of 8x H100-80G: twice the memory per GPU, so all
32 rows per GPU in one micro-batch (compiled for 8x H100: 36.5 of 80 GiB; docs/performance.md). Every weight is then
gathered once per update."""

import os
import runpy

import ml_collections

a100x8 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a100x8.py"))


def get_config() -> ml_collections.ConfigDict:
    c = a100x8["get_config"]()
    c.train.micro_batches = 1                  # 32 rows per GPU: the fewest micro-batches that fit
    c.data.worker_count = 24
    c.hardware.update(num_devices=8, device_memory_gib=80.0, target="8xh100")
    return c
