"""Decode benchmark: our sampler vs transformers `generate` on the hf-llava export of the same random weights.

  python -m oq2vl_jax.bench decode [--decode_size small|full] [--batches 1,8,64] [--new_tokens 32] [--repeats 5]

One process builds a random identity-pool model (every patch to the LLM, the exportable 729-token kind), saves it as
an oq2vl_jax checkpoint, exports it with `convert export --to hf-llava` and times both on the same prompts: B copies
of `<image>` + a short question through the chat template, greedy, no stop tokens (both make exactly N new tokens).

How decode is timed: inside one generation, after its prefill, never as the difference of two whole generate calls.
(t(N tokens) - t(1 token) subtracts two numbers that are mostly prefill; on a shared 2-core CPU five runs of it gave
transformers' batch-8 decode as 2,266, 28, 2.5e11, 18 and 248 tokens/s.)
  ours          `Sampler.generate(timings=...)`: the host waits for the prefill, then times the on-device decode loop
                alone; per token = loop time / N (the loop runs one decoder step per new token)
  transformers  `generate(streamer=clock)`: the clock records when each token reaches the host (generate already
                waits for every token to check its stopping criteria); prefill = first token - prompt hand-over,
                per token = (last token - first token) / (N - 1)
Both sides run alternately in one process: one warm-up generation each (compilation, allocation), then `repeats`
rounds of ours, transformers, so a shared machine's changing load falls on both alike. Reported per side: per-token
decode time and prefill as min / median / max over the repeats; the decode ratio from the medians, with the range
its repeats allow (our slowest over their fastest .. our fastest over their slowest), and from the fastest repeat
of each (load only ever slows a run down, so on a shared machine the fastest repeats are the most repeatable).

A ratio is refused, with the reason, when any repeat's interval is not positive or is implausible: a decode step
faster than the decoder's matmul FLOPs (2 x weights x batch) allow at `PLAUSIBLE_FACTOR` x the matmul rate measured
on the same device in the same run.

  same_tokens    the first row's greedy tokens agree (both ran the same computation)
  peak_mem_gib   GPU only: device peak (ours: XLA's allocator stats; transformers: torch.cuda.max_memory_allocated)

Sizes: "small" (CPU: a ~10M-parameter decoder, 28 px images -> 49 tokens) and "full" (Open-Qwen2VL: SigLIP So400m
+ Qwen2.5-1.5B, 729 image tokens, bf16 on GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from oq2vl_jax import checkpoint_io
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig, Qwen2Config, SiglipConfig, open_qwen2vl
from oq2vl_jax.training.flops import llm_matmul_params

SMALL = VLMConfig(vision=SiglipConfig(width=64, depth=3, mlp_dim=128, num_heads=4, patch_size=4, image_size=28),
                  llm=Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                                  num_kv_heads=2, head_dim=64, rope_theta=1e6),
                  tokens_per_image=49)
QUESTION = "Describe the image in one sentence."
PLAUSIBLE_FACTOR = 4.0  # a decode step may not beat its matmul FLOPs at this multiple of the measured matmul rate


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


def _pin_process(cpus) -> set[int]:
    """Restricts every thread of this process (XLA's pool, torch's OpenMP threads) to `cpus`; returns the old set."""
    old = os.sched_getaffinity(0)
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    return old


@contextlib.contextmanager
def cpu_threads(n: int):
    """On CPU, both sides on `n` cores and torch on `n` threads for the duration (0 = each library's default).

    Why: on a machine shared with other jobs, torch's OpenMP parallel regions wait at every barrier for a thread the
    OS has descheduled; with 2 threads on a loaded 2-core machine transformers' per-token time varied 20x between
    repeats (20 to 430 ms), at 1 thread by ~1.5x. One core each is the comparison a shared machine can repeat."""
    import torch

    if n <= 0 or jax.default_backend() != "cpu":
        yield
        return
    old_threads = torch.get_num_threads()
    old_cpus = _pin_process(set(sorted(os.sched_getaffinity(0))[:n]))
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        _pin_process(old_cpus)


def matmul_rate(dtype) -> float:
    """FLOP/s of a square matmul on the default device (the yardstick of the plausibility check): best of 5."""
    n = 4096 if jax.default_backend() != "cpu" else 512
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


# ------------------------------------------------------------------------------------------------ one measurement
@dataclasses.dataclass(frozen=True)
class Sample:
    """One generation: prefill seconds, decode seconds per token, the first row's new tokens."""
    prefill_s: float
    token_s: float
    tokens: tuple[int, ...]


def spread(values) -> dict:
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def implausible(token_s: float, step_flops: float, rate: float) -> str | None:
    """Why a per-token decode interval cannot be trusted, or None."""
    if not math.isfinite(token_s) or token_s <= 0:
        return f"non-positive decode interval ({token_s:.3g} s)"
    if step_flops / token_s > PLAUSIBLE_FACTOR * rate:
        return (f"decode step of {token_s * 1e3:.3g} ms implies {step_flops / token_s / 1e9:.3g} GFLOP/s, over "
                f"{PLAUSIBLE_FACTOR:g}x the measured matmul rate ({rate / 1e9:.3g} GFLOP/s)")
    return None


def summarize_side(samples: list[Sample], batch: int, step_flops: float, rate: float) -> dict:
    token_s = [s.token_s for s in samples]
    problems = [p for p in (implausible(t, step_flops, rate) for t in token_s) if p]
    return {"prefill_ms": {k: 1e3 * v for k, v in spread([s.prefill_s for s in samples]).items()},
            "token_ms": {k: 1e3 * v for k, v in spread(token_s).items()},
            "decode_tok_s": batch / float(np.median(token_s)) if not problems else None,
            "repeats": len(samples), "refused": problems[0] if problems else None,
            "first_row_tokens": list(samples[-1].tokens)}


def compare(ours: dict, theirs: dict) -> dict:
    """Decode ratio (ours over transformers, > 1 = ours faster) from the medians, with its range; refused if either
    side's intervals are."""
    refused = ours["refused"] or theirs["refused"]
    if refused:
        return {"decode_speedup": None, "decode_speedup_range": None, "decode_speedup_fastest": None,
                "refused": refused}
    a, b = ours["token_ms"], theirs["token_ms"]
    return {"decode_speedup": b["median"] / a["median"], "decode_speedup_range": [b["min"] / a["max"],
                                                                                  b["max"] / a["min"]],
            "decode_speedup_fastest": b["min"] / a["min"],  # load only slows a run: the fastest repeats agree best
            "prefill_speedup": theirs["prefill_ms"]["median"] / ours["prefill_ms"]["median"], "refused": None}


# ------------------------------------------------------------------------------------------------ the two sides
def ours_side(vlm, image, batch: int, new_tokens: int) -> Callable[[], Sample]:
    from oq2vl_jax.inference.sampler import SamplingParams

    built = vlm.prompts([{"image": image, "text": QUESTION}] * batch, "chat")
    sampling = SamplingParams(max_new_tokens=new_tokens)

    def run() -> Sample:
        timings: dict = {}
        gens = vlm.generate_prompts(built, sampling, timings=timings)
        if len(gens[0].token_ids) != new_tokens:
            raise RuntimeError(f"ours made {len(gens[0].token_ids)} tokens, not {new_tokens}")
        return Sample(timings["prefill_s"], timings["decode_s"] / new_tokens, tuple(gens[0].token_ids))

    run.prompt_tokens = built[0].length
    return run


def transformers_side(model, processor, image, batch: int, new_tokens: int, dtype) -> Callable[[], Sample]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        """Records when generate hands over the prompt and each new token (as host tensors)."""

        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image] * batch, text=[prompt] * batch, return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    length = int(inputs["input_ids"].shape[1])

    def run() -> Sample:
        clock = Clock()
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=None, pad_token_id=processor.tokenizer.pad_token_id, streamer=clock)
        t = clock.times
        if len(t) != new_tokens + 1:
            raise RuntimeError(f"transformers streamed {len(t) - 1} tokens, not {new_tokens}")
        return Sample(t[1] - t[0], (t[-1] - t[1]) / (new_tokens - 1), tuple(ids[0, length:].tolist()))

    run.prompt_tokens = length
    return run


def _device_peaks() -> tuple[float | None, float | None]:
    import torch

    stats = jax.devices()[0].memory_stats() or {}
    ours = stats.get("peak_bytes_in_use", 0) / 2**30 or None
    theirs = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    return ours, theirs


def measure_batch(sides: dict[str, Callable[[], Sample]], repeats: int) -> dict[str, list[Sample]]:
    """One warm-up of each side, then `repeats` rounds alternating between the sides."""
    for run in sides.values():
        run()
    samples: dict[str, list[Sample]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, run in sides.items():
            samples[name].append(run())
    return samples


def run_decode_bench(size: str = "small", batches=(1, 8, 64), new_tokens: int = 32, repeats: int = 5,
                     workdir: str | None = None, on_row: Callable[[dict], None] | None = None,
                     threads: int = 1) -> dict:
    """`on_row(result so far)` after each batch size (the GPU job keeps what finished if it runs out of time);
    `threads`: see `cpu_threads` (CPU only)."""
    with cpu_threads(threads):
        return _run_decode_bench(size, batches, new_tokens, repeats, workdir, on_row, threads)


def _run_decode_bench(size, batches, new_tokens, repeats, workdir, on_row, threads) -> dict:
    import torch
    import transformers
    from PIL import Image

    from oq2vl_jax.convert import exporter
    from oq2vl_jax.demo.shapes import build_tiny_tokenizer
    from oq2vl_jax.inference import VLMInference
    from oq2vl_jax.text import tokens

    if new_tokens < 2 or repeats < 1 or not batches or min(batches) < 1:
        raise UserError(f"decode benchmark needs --new_tokens >= 2, --repeats >= 1 and batches >= 1; got "
                        f"{new_tokens}, {repeats}, {list(batches)}")
    config = decode_config(size)
    on_gpu = jax.default_backend() == "gpu"
    device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
    dtype = "bf16" if on_gpu else "fp32"
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    rate = matmul_rate(jnp.bfloat16 if dtype == "bf16" else jnp.float32)
    result = {"size": size, "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
              "cpu_count": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
              "transformers": transformers.__version__, "new_tokens": new_tokens, "repeats": repeats,
              "method": "per-token decode timed inside one generation after its prefill; sides alternate",
              "cpu_threads": threads if not on_gpu else None,
              "matmul_gflops": rate / 1e9, "config": dataclasses.asdict(config), "rows": []}
    tmp = workdir or tempfile.mkdtemp(prefix="oq2vl_decode_bench_")
    try:
        tok_dir = os.path.join(tmp, "tokenizer")
        tokens.prepare(build_tiny_tokenizer(os.path.join(tmp, "tokenizer_src")), tok_dir,
                       vocab_size=config.llm.vocab_size)  # with the reference's tokens, as `convert import`
        ckpt = os.path.join(tmp, "ckpt")
        checkpoint_io.save_params(ckpt, _random_params(config), config, tokenizer_dir=tok_dir)
        hf_dir = os.path.join(tmp, "hf")
        exporter.export(ckpt, "hf-llava", hf_dir, dtype=dtype)
        vlm = VLMInference.load(ckpt, devices=jax.devices()[:1])
        vlm.stop_ids = []  # exactly N tokens, as transformers without an EOS
        model = transformers.LlavaForConditionalGeneration.from_pretrained(hf_dir, dtype=torch_dtype).to(device).eval()
        processor = transformers.AutoProcessor.from_pretrained(hf_dir)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
        for b in batches:
            sides = {"ours": ours_side(vlm, image, b, new_tokens),
                     "transformers": transformers_side(model, processor, image, b, new_tokens, torch_dtype)}
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            samples = measure_batch(sides, repeats)
            step_flops = 2.0 * llm_matmul_params(config) * b
            row = {"batch": b, "prompt_tokens": sides["ours"].prompt_tokens}
            for name, run in sides.items():
                row[name] = summarize_side(samples[name], b, step_flops, rate)
            row["transformers"]["prompt_tokens"] = sides["transformers"].prompt_tokens
            row["ours"]["peak_mem_gib"], row["transformers"]["peak_mem_gib"] = _device_peaks() if on_gpu else (None,
                                                                                                           None)
            row.update(compare(row["ours"], row["transformers"]))
            row["same_tokens"] = row["ours"]["first_row_tokens"] == row["transformers"]["first_row_tokens"]
            result["rows"].append(row)
            if on_row:
                on_row(result)
    finally:
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def _range(d: dict, fmt: str) -> str:
    return f"{d['median']:{fmt}} ({d['min']:{fmt}}-{d['max']:{fmt}})"


def format_table(result: dict) -> str:
    threads = f", {result['cpu_threads']} core(s) each" if result.get("cpu_threads") else ""
    lines = [f"decode benchmark ({result['size']}, {result['device']}{threads}, {result['new_tokens']} new tokens, "
             f"{result['repeats']} alternating repeats; median (min-max))",
             "| batch | prompt tok | ours prefill ms | hf prefill ms | ours ms/token | hf ms/token | ours decode tok/s | "
             "hf decode tok/s | decode x (range) | decode x fastest | ours peak GiB | hf peak GiB | same tokens |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    gib = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    tok_s = lambda v: f"{v:.0f}" if v is not None else "-"  # noqa: E731
    for r in result["rows"]:
        a, b = r["ours"], r["transformers"]
        ratio = (f"{r['decode_speedup']:.1f} ({r['decode_speedup_range'][0]:.1f}-{r['decode_speedup_range'][1]:.1f}) | "
                 f"{r['decode_speedup_fastest']:.1f}" if r["decode_speedup"] is not None
                 else f"refused: {r['refused']} | -")
        lines.append(f"| {r['batch']} | {r['prompt_tokens']} | {_range(a['prefill_ms'], '.1f')} | "
                     f"{_range(b['prefill_ms'], '.1f')} | {_range(a['token_ms'], '.2f')} | "
                     f"{_range(b['token_ms'], '.2f')} | {tok_s(a['decode_tok_s'])} | {tok_s(b['decode_tok_s'])} | "
                     f"{ratio} | {gib(a['peak_mem_gib'])} | {gib(b['peak_mem_gib'])} | {r['same_tokens']} |")
    return "\n".join(lines)
