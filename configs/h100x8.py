"""The paper's pre-training recipe (configs/a100x8.py) on one node of 8x H100-80G: twice the memory per GPU, so 4
rows per GPU per micro-batch (docs/reference_notes.md §11: the PyTorch peer fits 4 rows with remat at ~50 GiB)."""

import os
import runpy

import ml_collections

a100x8 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a100x8.py"))


def get_config() -> ml_collections.ConfigDict:
    c = a100x8["get_config"]()
    c.train.micro_batches = 8
    c.data.worker_count = 24
    c.hardware.update(num_devices=8, device_memory_gib=80.0, target="8xh100")
    return c
