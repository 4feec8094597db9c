"""The paper's pre-training recipe (configs/a100x8.py) on a TPU v5p-128 slice: 64 chips on 16 hosts, 95 GiB HBM per
chip. FSDP over all 64 chips, splash attention; each chip gets 4 rows per update, in one micro-batch.

For several slices (multislice), set --config.mesh.dcn_data=<slices> and hardware.num_slices."""

import os
import runpy

import ml_collections

a100x8 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a100x8.py"))


def get_config() -> ml_collections.ConfigDict:
    c = a100x8["get_config"]()
    c.distributed = "on"
    c.train.micro_batches = 1                  # 256 rows / 64 chips = 4 rows per chip: one micro-batch fits
    c.data.worker_count = 8
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.hardware.update(num_devices=64, device_memory_gib=95.0, target="v5p-128")
    return c
