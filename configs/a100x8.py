"""The paper's pre-training (docs/reference_notes.md §7, §11) on one node of 8x A100-40G: Qwen2.5-1.5B-Instruct +
SigLIP So400m/14@384 (frozen, bf16) + a fresh 144-token average-pool projector; packed rows of 4096; 256 rows per
update; AdamW lr 5e-5, wd 0.01, 3% warmup then cosine, clip 1.0; one epoch of ~5B packed tokens.

Set the paths:
  --config.init.llm_dir=/models/Qwen2.5-1.5B-Instruct --config.init.vision_src=/models/ViT-SO400M-14-SigLIP-384
  --config.data.sources='({"kind": "webdataset", "path": "/data/datacomp_dfn_mlm"}, {"kind": "webdataset", ...})'
and train.num_steps for your data: packed tokens / (global_batch_rows x 4096).
"""

import os
import runpy

import ml_collections

base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))


def get_config() -> ml_collections.ConfigDict:
    c = base["get_config"]()
    c.init.source = "pretrained"
    c.model.update(tokens_per_image=144, compute_dtype="bfloat16", frozen_dtype="bfloat16", remat="full",
                   attention="auto",
                   vision_chunk=9,              # 27 image slots per row = 3 chunks of 9: no padding slot computed
                   loss_chunk=512)              # positions of each row per loss step: 16 rows x 512 x vocab fp32
    c.train.update(stage="pretrain", num_steps=4769, global_batch_rows=256,
                   micro_batches=2)             # 16 rows per GPU per micro-batch: the fewest micro-batches that fit
                                                # (--dry_run --dry_run_compile: 21.5 of 40 GiB; docs/performance.md)
    c.data.update(image_size=384, row_length=4096, worker_count=16, read_threads=8)
    c.optim.update(lr=5e-5, weight_decay=0.01, warmup_ratio=0.03, clip_norm=1.0)
    c.mesh.update(data=1, fsdp=-1, tensor=1)   # FSDP over the 8 GPUs (the reference: FSDP full shard)
    c.checkpoint.update(every_steps=500, keep=3)
    c.hardware.update(num_devices=8, device_memory_gib=40.0, target="8xa100-40gb")
    return c
