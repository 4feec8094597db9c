"""The CPU demo's second stage: supervised fine-tuning of the demo's pre-trained checkpoint (configs/demo.py) on
synthetic question/answer conversations about new demo images ("What colour is the shape?" -> "Red.", 1-3 turns,
every 6th conversation text-only; oq2vl_jax/demo/sft.py), written into WORKDIR/sft_data on the first run.

    python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo            # pre-train (minutes)
    python -m oq2vl_jax.train --config configs/demo_sft.py --workdir runs/demo_sft    # then SFT (minutes)

As the paper's recipe, in miniature: init.source=checkpoint keeps the trained projector and LLM, the vision tower
stays frozen (stage "pretrain" trains projector + LLM, like the original's "finetune"), and the image tokens go from
the pooled 4x4 = 16 of pre-training to the full 8x8 = 64 patch grid (the paper: 144 -> 729; the pool has no
parameters). Conversations are packed into rows with per-conversation masking; the loss is on the answers only. At
the end the trainer scores held-out answers with the images, with blank images, and against the best image-blind
answer (oq2vl_jax/demo/answers.py).
"""

import os
import runpy

import ml_collections

_here = os.path.dirname(os.path.abspath(__file__))
base = runpy.run_path(os.path.join(_here, "base.py"))
demo = runpy.run_path(os.path.join(_here, "demo.py"))


def get_config() -> ml_collections.ConfigDict:
    c = base["get_config"]()
    c.model.update(demo["get_config"]().model.to_dict())
    c.model.tokens_per_image = 64            # 4x4 pooled in pre-training -> the full 8x8 grid (the paper: 144 -> 729)
    c.init.update(source="checkpoint", init_from="runs/demo/checkpoints")
    c.data.update(image_size=32, row_length=256, pack_buffer=256, num_epochs=-1, read_threads=2,
                  chat_format="open_qwen2vl", packing="ffd_fill")
    c.train.update(stage="pretrain", num_steps=250, global_batch_rows=8, micro_batches=1, log_every=25,
                   eval_every=125, eval_batches=0)
    c.optim.update(lr=5e-4, weight_decay=0.1, warmup_ratio=0.03)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every_steps=125, keep=2)
    # the demo VQA task (evals/tasks/demo.py) on the held-out conversations, generated in the chat template, every
    # train.eval_every steps and at the end: metrics.jsonl, TensorBoard and WORKDIR/evals/step_N/report.md
    c.evals = ("demo:prompt=chat,limit=0",)
    c.demo_sft = ml_collections.ConfigDict(dict(
        data_dir="",                 # "" = WORKDIR/sft_data; a new or empty directory, or an earlier SFT demo set
        num_train=2000, num_eval=200, seed=1,
        text_only_every=6,           # every 6th conversation has no image
        score_answers=True,
    ))
    return c
