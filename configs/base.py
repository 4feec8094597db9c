"""Shared defaults of every training config; the other configs start from `get_config()` here and override.

Load a config with `--config configs/<name>.py`; override any field as `--config.optim.lr=1e-4`.
The defaults are the paper's pre-training recipe (docs/reference_notes.md §7) on whatever devices are present.
"""

import ml_collections

from oq2vl_jax.data.config import default_data_config


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0                       # data order; random init
    c.distributed = "auto"           # auto | on | off (parallel.initialize_distributed)

    c.model = ml_collections.ConfigDict(dict(
        vision="siglip-so400m-384",  # presets (models/presets.py), used by init.source=random and --dry_run
        llm="qwen2.5-1.5b",
        vision_overrides={},         # preset fields to change, e.g. {"depth": 3}
        llm_overrides={},
        vocab_size=0,                # random init: 0 = the tokenizer's size rounded up to a multiple of 128
        tokens_per_image=144,        # 144 (12x12 pool, pre-training) or 729 (SFT)
        compute_dtype="bfloat16",
        frozen_dtype="bfloat16",     # storage dtype of frozen towers
        attention="auto",            # auto | xla | cudnn | splash
        remat="full",                # none | full | dots | dots_no_batch | save_attention (the reference: full)
        vision_chunk=8,
        loss_chunk=2048,
        reference_compat=False,      # with data.label_mode=reference_compat: the reference's packed-row training
    ))

    c.init = ml_collections.ConfigDict(dict(
        source="pretrained",         # pretrained (HF Qwen2 dir + SigLIP) | checkpoint (init_from) | random
        llm_dir="",                  # HF Qwen2(.5) directory (config.json + safetensors)
        vision_src="",               # SigLIP: HF dir, timm/open_clip dir or file, big_vision .npz
        init_from="",                # an oq2vl_jax checkpoint directory (converted or from an earlier run)
        projector_seed=1152,
    ))

    # sources are tuples, so they can be overridden on the command line:
    #   --config.data.sources='({"kind": "webdataset", "path": "/data/datacomp"}, {"kind": "webdataset", ...})'
    # tokenizer_dir "" = the tokenizer of the weights: init.llm_dir (pretrained), the init_from checkpoint's, or the
    # resumed one's
    c.data = default_data_config()

    c.train = ml_collections.ConfigDict(dict(
        stage="pretrain",            # align | pretrain | full
        num_steps=4769,              # ~5e9 packed tokens / (256 rows x 4096): the paper's one epoch
        global_batch_rows=256,       # rows per optimizer update, over all devices and micro-batches
        micro_batches=1,             # gradient accumulation steps per update
        max_nonfinite_in_row=20,     # stop after this many consecutive skipped (non-finite) steps
        log_every=10,
        eval_every=0,                # 0 = no periodic eval; needs data.eval_sources
        eval_batches=0,              # 0 = the whole eval split (single process only)
    ))

    # Evaluators run during training, "NAME[:key=value,...]" (oq2vl_jax/evals/specs.py, docs/evaluation.md), e.g.
    #   --config.evals='("demo:limit=32,every=100", "demo_attributes")'
    c.evals = ()

    c.optim = ml_collections.ConfigDict(dict(
        lr=5e-5, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, warmup_ratio=0.03, clip_norm=1.0,
    ))

    # ICI sizes (inside a node / slice) and DCN sizes (across them); one of each may be -1 (fill).
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))

    c.checkpoint = ml_collections.ConfigDict(dict(
        every_steps=500,
        keep=3,
        async_save=True,
        restore_data=True,           # False: on resume, restart the data stream (needed if the process count changed)
    ))

    c.log = ml_collections.ConfigDict(dict(tensorboard=True))
    c.hardware = ml_collections.ConfigDict(dict(
        peak_tflops=0.0,             # bf16 dense peak per device for MFU; 0 = from the device kind (training/flops.py)
        num_devices=0,               # the target's device count: what --dry_run simulates
        num_slices=1,                # TPU slices / GPU nodes (the dcn_* granules) for --dry_run
        device_memory_gib=0.0,       # for the --dry_run memory check
        target="",                   # --dry_run_compile compiles for it: v5p-128, v4-64, v5e-256, 8xa100-40gb, 8xh100,
                                     # 8xh200, cpu-8 (oq2vl_jax/training/targets.py); num_slices slices / nodes of it
    ))
    return c
