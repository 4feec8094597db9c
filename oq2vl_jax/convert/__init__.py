"""`python -m oq2vl_jax.convert`: import pretrained / released weights as oq2vl_jax checkpoints and export
checkpoints to foreign formats (prismatic, HF LLaVA, HF Qwen2). The weight namings themselves (HF, timm / open_clip,
big_vision, tensor files) are in oq2vl_jax/pretrained/, which the trainer uses too."""
