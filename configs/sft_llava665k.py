"""The paper's SFT on LLaVA-665k (the original's prismatic-vlms/fine_tune.sh) on one node of 8x A100-40G: the
pre-training checkpoint's projector + LLM (init.source=checkpoint), 729 tokens per image (the full 27 x 27 SigLIP
grid; the pool has no parameters, so the pre-training projector loads unchanged), vision tower frozen (the
original's stage "finetune" = our "pretrain": projector + LLM trained), AdamW lr 2e-5, wd 0.1, 3% warmup then
cosine, clip 1.0, one epoch, the original's chat template (data.chat_format="open_qwen2vl").

    python -m oq2vl_jax.train --config configs/sft_llava665k.py --workdir runs/sft_llava \\
      --config.init.init_from=runs/pretrain/checkpoints \\
      --config.data.sources='({"kind": "llava", "path": "/data/llava/llava_v1_5_mix665k.json", "image_root": "/data/llava/images"},)'

Batch: the original steps every 128 conversations, one conversation per padded row. Here conversations are packed
into 4096-token rows: ~4.6 per row at 729 tokens per image on LLaVA-665k-like lengths (benchmarks/
bench_sft_packing.py; the trainer logs the real count as data/documents), so 32 rows per update (the nearest
multiple of 8 GPUs x 2 micro-batches to 128 / 4.6 = 28) are ~147 conversations, and ~4,500 updates are one epoch
(665k / 147). The loss is token-weighted over all answer tokens of the update (the original averages
per-micro-batch means). data.num_epochs=1 stops the run at the end of the data even if train.num_steps is a little
high; docs/sft.md says how to check the numbers. data.packing="none" gives the original's one conversation per row
(then global_batch_rows=128, micro_batches=8, num_steps=5200).
"""

import os
import runpy

import ml_collections

hardware = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "a100x8.py"))


def get_config() -> ml_collections.ConfigDict:
    c = hardware["get_config"]()
    c.init.update(source="checkpoint", init_from="")   # the pre-training run's WORKDIR/checkpoints
    c.model.update(tokens_per_image=729)
    c.data.update(row_length=4096, packing="ffd_fill", chat_format="open_qwen2vl", missing_image="text_only",
                  num_epochs=1)
    c.train.update(stage="pretrain",                   # projector + LLM, as the original's "finetune"
                   num_steps=4500, global_batch_rows=32, micro_batches=1)  # 4 rows per GPU: one micro-batch fits
    c.optim.update(lr=2e-5, weight_decay=0.1, warmup_ratio=0.03, clip_norm=1.0)
    c.checkpoint.update(every_steps=1000, keep=2)
    return c
