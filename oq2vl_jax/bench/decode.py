"""Decode benchmark: our sampler vs transformers `generate` on the hf-llava export of the same random weights.

  python -m oq2vl_jax.bench decode [--decode_size small|full] [--batches 1,8,64] [--new_tokens 32]

One process builds a random identity-pool model (every patch to the LLM, the exportable 729-token kind), saves it as
an oq2vl_jax checkpoint, exports it with `convert export --to hf-llava` and times both on the same prompts: B copies
of `<image>` + a short question through the chat template, greedy, no stop tokens (both run exactly N new tokens).

  prefill_ms     time of generate(max_new_tokens=1): preprocessing excluded, prompt through the model, first token
  decode_tok_s   B * (N - 1) / (time of generate(N) - time of generate(1)): the per-token loop alone
  same_tokens    the first row's greedy tokens agree (both ran the same computation)
  peak_mem_gib   GPU: device peak (ours: XLA's allocator stats; transformers: torch.cuda.max_memory_allocated);
                 CPU: the process's peak RSS after that implementation ran (cumulative, so only an upper bound)

Sizes: "small" (CPU: a ~10M-parameter decoder, 28 px images -> 49 tokens) and "full" (Open-Qwen2VL: SigLIP So400m
+ Qwen2.5-1.5B, 729 image tokens, bf16 on GPU). Median of `repeats` timed runs after one warm-up run (compilation).
"""

from __future__ import annotations

import dataclasses
import os
import resource
import shutil
import tempfile
import time

import jax
import numpy as np

from oq2vl_jax import checkpoint_io
from oq2vl_jax.models.presets import VLMConfig, Qwen2Config, SiglipConfig, open_qwen2vl

SMALL = VLMConfig(vision=SiglipConfig(width=64, depth=3, mlp_dim=128, num_heads=4, patch_size=4, image_size=28),
                  llm=Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                                  num_kv_heads=2, head_dim=64, rope_theta=1e6),
                  tokens_per_image=49)
QUESTION = "Describe the image in one sentence."


def decode_config(size: str) -> VLMConfig:
    if size == "small":
        return SMALL
    if size == "full":
        return open_qwen2vl(729)
    raise ValueError(f"unknown decode benchmark size {size!r}; use small or full")


def _random_params(config: VLMConfig, seed: int = 0) -> dict:
    from flax import nnx

    from oq2vl_jax.models.params import param_tree
    from oq2vl_jax.models.vlm import VLM

    with jax.default_device(jax.devices("cpu")[0]):  # host memory: the tree is saved, then placed by the loader
        return jax.tree.map(np.asarray, jax.jit(lambda: param_tree(VLM(config, rngs=nnx.Rngs(seed))))())


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(fn, repeats: int) -> tuple[float, object]:
    """(median seconds, the last result)."""
    result = fn()  # warm-up (compilation / allocation)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def _rates(batch: int, new_tokens: int, t1: float, tn: float) -> dict:
    return {"prefill_ms": 1e3 * t1, "decode_tok_s": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
            "total_s": tn}


def bench_ours(ckpt: str, image, batches, new_tokens: int, repeats: int) -> list[dict]:
    from oq2vl_jax.inference import VLMInference
    from oq2vl_jax.inference.sampler import SamplingParams

    vlm = VLMInference.load(ckpt, devices=jax.devices()[:1])
    vlm.stop_ids = []  # run exactly N tokens, as transformers without an EOS
    out = []
    for b in batches:
        built = vlm.prompts([{"image": image, "text": QUESTION}] * b, "chat")

        def run(n):
            return lambda: vlm.generate_prompts(built, SamplingParams(max_new_tokens=n))

        (t1, _), (tn, gens) = _timed(run(1), repeats), _timed(run(new_tokens), repeats)
        stats = jax.devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use", 0) / 2**30 or _peak_rss_gib()
        out.append({"impl": "oq2vl_jax", "batch": b, "prompt_tokens": built[0].length, **_rates(b, new_tokens, t1, tn),
                    "peak_mem_gib": peak, "first_row_tokens": list(gens[0].token_ids)})
    return out


def bench_transformers(hf_dir: str, image, batches, new_tokens: int, repeats: int, dtype: str) -> list[dict]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch_dtype).to(device).eval()
    processor = transformers.AutoProcessor.from_pretrained(hf_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    out = []
    for b in batches:
        inputs = processor(images=[image] * b, text=[prompt] * b, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(torch_dtype)

        def run(n):
            def go():
                with torch.no_grad():
                    ids = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                         eos_token_id=None, pad_token_id=processor.tokenizer.pad_token_id)
                if device == "cuda":
                    torch.cuda.synchronize()
                return ids
            return go

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        (t1, _), (tn, ids) = _timed(run(1), repeats), _timed(run(new_tokens), repeats)
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else _peak_rss_gib()
        length = int(inputs["input_ids"].shape[1])
        out.append({"impl": "transformers", "batch": b, "prompt_tokens": length, **_rates(b, new_tokens, t1, tn),
                    "peak_mem_gib": peak, "first_row_tokens": ids[0, length:].tolist()})
    return out


def run_decode_bench(size: str = "small", batches=(1, 8, 64), new_tokens: int = 32, repeats: int = 3,
                     workdir: str | None = None) -> dict:
    from PIL import Image

    from oq2vl_jax.convert import exporter
    from oq2vl_jax.demo.shapes import build_tiny_tokenizer
    from oq2vl_jax.text import tokens

    config = decode_config(size)
    on_gpu = jax.default_backend() == "gpu"
    tmp = workdir or tempfile.mkdtemp(prefix="oq2vl_decode_bench_")
    try:
        tok_dir = os.path.join(tmp, "tokenizer")
        tokens.prepare(build_tiny_tokenizer(os.path.join(tmp, "tokenizer_src")), tok_dir,
                          vocab_size=config.llm.vocab_size)  # with the reference's tokens, as `convert import`
        ckpt = os.path.join(tmp, "ckpt")
        checkpoint_io.save_params(ckpt, _random_params(config), config, tokenizer_dir=tok_dir)
        hf_dir = os.path.join(tmp, "hf")
        dtype = "bf16" if on_gpu else "fp32"
        exporter.export(ckpt, "hf-llava", hf_dir, dtype=dtype)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        ours = bench_ours(ckpt, image, batches, new_tokens, repeats)
        theirs = bench_transformers(hf_dir, image, batches, new_tokens, repeats, dtype)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    import torch
    import transformers

    rows = []
    for a, b in zip(ours, theirs):
        rows.append({"batch": a["batch"], "ours": a, "transformers": b,
                     "decode_speedup": a["decode_tok_s"] / b["decode_tok_s"],
                     "same_tokens": a["first_row_tokens"] == b["first_row_tokens"],
                     "prefill_speedup": b["prefill_ms"] / a["prefill_ms"]})
    return {"size": size, "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "new_tokens": new_tokens, "repeats": repeats,
            "config": dataclasses.asdict(config), "rows": rows}


def format_table(result: dict) -> str:
    lines = [f"decode benchmark ({result['size']}, {result['device']}, {result['new_tokens']} new tokens, "
             f"median of {result['repeats']})",
             "| batch | prompt tok | ours prefill ms | hf prefill ms | ours decode tok/s | hf decode tok/s | "
             "decode x | ours peak GiB | hf peak GiB | same tokens |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b = r["ours"], r["transformers"]
        lines.append(f"| {r['batch']} | {a['prompt_tokens']} | {a['prefill_ms']:.1f} | {b['prefill_ms']:.1f} | "
                     f"{a['decode_tok_s']:.0f} | {b['decode_tok_s']:.0f} | {r['decode_speedup']:.1f} | "
                     f"{a['peak_mem_gib']:.2f} | {b['peak_mem_gib']:.2f} | {r['same_tokens']} |")
    return "\n".join(lines)
