"""The CPU demo: a tiny VLM trained from random init on synthetic coloured shapes (oq2vl_jax/demo/shapes.py), written
into WORKDIR/demo_data on the first run. The demo data is used only when no data.sources are given, and
--config.demo.enabled=False turns it off (oq2vl_jax/demo/setup.py). Every tower trains (stage "full": nothing
here is pretrained). At the end the trainer scores how well the model names the colour, shape and position of
held-out images."""

import os
import runpy

import ml_collections

base = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "base.py"))


def get_config() -> ml_collections.ConfigDict:
    c = base["get_config"]()
    c.model.update(
        vision="siglip-tiny", vision_overrides=dict(width=64, depth=3, mlp_dim=128, num_heads=4, patch_size=4),
        llm="qwen2-tiny", llm_overrides=dict(hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
                                             num_kv_heads=2, head_dim=32),
        tokens_per_image=16, compute_dtype="float32", frozen_dtype="float32", attention="xla", remat="none",
        vision_chunk=8, loss_chunk=512)
    c.init.source = "random"
    c.data.update(image_size=32, row_length=128, pack_buffer=256, num_epochs=-1, read_threads=2)
    c.train.update(stage="full", num_steps=300, global_batch_rows=16, micro_batches=1, log_every=25,
                   eval_every=100, eval_batches=0)
    c.optim.update(lr=2e-3, weight_decay=0.01)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
    c.checkpoint.update(every_steps=100, keep=2)
    # the held-out attribute score every train.eval_every steps, into metrics.jsonl / TensorBoard
    # (training/evaluators.py)
    c.evals = ("demo_attributes",)
    c.demo = ml_collections.ConfigDict(dict(
        enabled=True,                # False: no demo data at all; data.* as given (oq2vl_jax/demo/setup.py)
        data_dir="",                 # "" = WORKDIR/demo_data; a new or empty directory, or an earlier demo set
        num_train=2048, num_eval=128, seed=0,
        eval_row_length=64,          # one held-out caption document per row when scoring attributes
        score_attributes=True,
    ))
    c.hardware.target = "cpu-8"
    return c
