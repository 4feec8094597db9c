"""The PyTorch peer: what a user would run instead of oq2vl_jax (the reference's stack), on the same shapes.

transformers' Qwen2ForCausalLM (SDPA attention, fp32 master weights, bf16 autocast, gradient checkpointing on every
decoder layer as the reference does), SigLIP So400m frozen in bf16 running 26 blocks (no wasted last block, no head),
AdaptiveAvgPool2d + Linear/GELU/Linear projector, fused AdamW, global-norm clipping at 1.0; rows of `row_length`
tokens with ~25 images x 144 tokens, plain causal attention over the whole row (as the reference trains).
Random weights; warm-up steps excluded. Not part of the package.

  python benchmarks/torch_peer.py --rows 2 --steps 5                  # full size, GPU
  python benchmarks/torch_peer.py --tiny --rows 1 --steps 2           # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import transformers

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from oq2vl_jax.bench.shapes import pretraining_rows  # noqa: E402  (same synthetic rows as ours)
from oq2vl_jax.models.presets import VLMConfig, open_qwen2vl, llm_preset, vision_preset  # noqa: E402
from oq2vl_jax.training import flops  # noqa: E402  (same FLOP formula as ours)
from oq2vl_jax.training.step import flop_counts  # noqa: E402


def build(config: VLMConfig, device, grad_ckpt: bool):
    v, q = config.vision, config.llm
    vision = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.num_blocks_run,
        num_attention_heads=v.num_heads, image_size=v.image_size, patch_size=v.patch_size, hidden_act="gelu",
        vision_use_head=False, attn_implementation="sdpa")).to(device, torch.bfloat16).eval().requires_grad_(False)
    llm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=q.vocab_size, hidden_size=q.hidden_size, intermediate_size=q.intermediate_size,
        num_hidden_layers=q.num_layers, num_attention_heads=q.num_heads, num_key_value_heads=q.num_kv_heads,
        head_dim=q.head_dim, rope_theta=q.rope_theta, tie_word_embeddings=q.tie_word_embeddings, use_cache=False,
        attn_implementation="sdpa")).to(device, torch.float32)
    if grad_ckpt:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    projector = torch.nn.Sequential(torch.nn.Linear(v.width, q.hidden_size), torch.nn.GELU(),
                                    torch.nn.Linear(q.hidden_size, q.hidden_size)).to(device, torch.float32)
    pool = torch.nn.AdaptiveAvgPool2d((config.pool_size, config.pool_size))
    return vision, pool, projector, llm


def step_fn(config, vision, pool, projector, llm, optimizer, device):
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(batch):
        with autocast:
            with torch.no_grad():
                pixels = (batch["images"].float() / 255.0 - 0.5) / 0.5
                feats = vision(pixel_values=pixels.permute(0, 3, 1, 2).to(torch.bfloat16),
                               output_hidden_states=True).hidden_states[-1]
            g = config.vision.grid
            grid = feats.transpose(1, 2).reshape(feats.shape[0], -1, g, g)
            img = projector(pool(grid.float()).flatten(2).transpose(1, 2))
            embeds = llm.get_input_embeddings()(batch["input_ids"])
            embeds = embeds.masked_scatter(batch["image_mask"][..., None], img.to(embeds.dtype))
            out = llm(inputs_embeds=embeds, labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in list(llm.parameters()) + list(projector.parameters())], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss

    return step


def to_torch(rows: dict, device) -> dict:
    valid = rows["image_valid"].reshape(-1)
    labels = np.where(rows["image_mask"] | (rows["segment_ids"] == 0), -100, rows["input_ids"]).astype(np.int64)
    return {"input_ids": torch.from_numpy(rows["input_ids"].astype(np.int64)).to(device),
            "image_mask": torch.from_numpy(rows["image_mask"]).to(device),
            "images": torch.from_numpy(rows["images"].reshape(-1, *rows["images"].shape[2:])[valid]).to(device),
            "labels": torch.from_numpy(labels).to(device)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-grad-ckpt", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="tiny model and rows: checks the script on CPU")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak (H100/H200: 989)")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        config = VLMConfig(vision=vision_preset("siglip-tiny"), llm=llm_preset("qwen2-tiny"), tokens_per_image=4)
        shape = dict(row_length=256, images_per_row=8)
    else:
        config = open_qwen2vl(144)
        shape = dict(row_length=4096, images_per_row=25)
    torch.manual_seed(0)
    vision, pool, projector, llm = build(config, device, grad_ckpt=not args.no_grad_ckpt)
    params = list(llm.parameters()) + list(projector.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01, fused=device.type == "cuda")
    step = step_fn(config, vision, pool, projector, llm, optimizer, device)
    rows = pretraining_rows(args.rows, config=config, seed=0, **shape)
    batch = to_torch(rows, device)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step(batch)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step(batch)
        sync()
        times.append(time.perf_counter() - t0)
    step_s = float(np.mean(times))
    # The peer attends causally over the whole row (as the reference), so its attention FLOPs count whole rows.
    counts = {k: float(v) for k, v in flop_counts(rows, reference_compat=True).items()}
    model_flops = flops.step_flops(config, ("projector", "llm"), counts)
    tokens = int((rows["segment_ids"] > 0).sum())
    result = {
        "impl": "torch-peer", "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "transformers": transformers.__version__, "rows": args.rows,
        "grad_ckpt": not args.no_grad_ckpt, "step_ms": 1e3 * step_s, "tokens_per_s": tokens / step_s,
        "images_per_s": int(rows["image_valid"].sum()) / step_s,
        "mfu": model_flops / step_s / (args.peak_tflops * 1e12),
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "loss": float(loss.detach()),
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f)
    return result


if __name__ == "__main__":
    main()
