"""Pretrained weights in foreign namings -> oq2vl_jax parameter trees (and back): tensor files (safetensors, torch,
npz), HF Qwen2 / SigLIP, timm / open_clip and big_vision SigLIP, and `importer.import_pretrained`, which builds a
model's initial weights. Shared by the trainer (init.source=pretrained) and `python -m oq2vl_jax.convert`."""
