"""The paper's SFT on MAmmoTH-VL-10M (the original's prismatic-vlms/fine_tune_mammoth.sh) on one node of 8x
A100-40G: as configs/sft_llava665k.py (729 tokens per image from the pre-training checkpoint, projector + LLM trained,
AdamW lr 2e-5, wd 0.1, 3% warmup, cosine, clip 1.0, the original's chat template) but stopped after 150,000
updates of ~128-150 conversations, as the original's max_steps=150000 (its "large-finetune" stage differs from
"finetune" only in the dataset class).

    python -m oq2vl_jax.train --config configs/sft_mammoth.py --workdir runs/sft_mammoth \\
      --config.init.init_from=runs/pretrain/checkpoints \\
      --config.data.sources='({"kind": "mammoth", "path": "/data/MAmmoTH-VL-Instruct-12M/mammoth_si_10M_simple.jsonl", "image_root": "/data/MAmmoTH-VL-Instruct-12M/single_image_data"},)'

The path may also be the raw mammoth_si_10M.json (21 GB): it is indexed once (python -m
oq2vl_jax.data.sources.json_index FILE builds the index ahead of time) and never loaded whole. Conversations are packed
into 4096-token rows; 32 rows per update are ~130-150 conversations (docs/sft.md; MAmmoTH's answers are longer than
LLaVA's, so fewer per row); the data repeats until train.num_steps.
"""

import os
import runpy

import ml_collections

llava = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sft_llava665k.py"))


def get_config() -> ml_collections.ConfigDict:
    c = llava["get_config"]()
    c.data.update(num_epochs=-1)
    c.train.update(num_steps=150000)
    c.checkpoint.update(every_steps=5000, keep=2)
    return c
