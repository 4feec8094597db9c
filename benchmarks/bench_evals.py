"""Throughput of the evaluation runner (items/s) on the demo VQA task with a random-init model through the real
inference API: one warm-up batch (compiles), then the timed run over `--items` items.

  python benchmarks/bench_evals.py --size tiny --items 64 --batch 8          # CPU: tiny model
  python benchmarks/bench_evals.py --size full --items 256 --batch 32        # GPU: Open-Qwen2VL shapes (SigLIP
                                                                             # So400m + Qwen2.5-1.5B, 729 tokens)
Prints one JSON line (also appended to --json). Numbers are for the runner + model together; the prompt style is the
reference one (16 new tokens at most, the harness's stop strings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_model(size: str, tokenizer_dir: str):
    import jax
    from flax import nnx

    from oq2vl_jax.evals.checkpoint_model import InferenceModel
    from oq2vl_jax.inference import VLMInference
    from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, open_qwen2vl, vision_preset
    from oq2vl_jax.models.vlm import VLM

    if size == "tiny":
        config = VLMConfig(vision=vision_preset("siglip-tiny"),
                           llm=dataclasses.replace(llm_preset("qwen2-tiny"), vocab_size=1024), tokens_per_image=4)
    else:
        config = open_qwen2vl(tokens_per_image=729)

    @jax.jit
    def init():
        return nnx.split(VLM(config, ModelOptions(), rngs=nnx.Rngs(0)), nnx.Param)[1].to_pure_dict()

    return InferenceModel(VLMInference(config, init(), tokenizer_dir, devices=jax.local_devices())), config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", choices=("tiny", "full"), default="tiny")
    p.add_argument("--items", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", default="")
    args = p.parse_args()
    import jax

    from oq2vl_jax.demo.shapes import build_tiny_tokenizer, write_demo_dataset
    from oq2vl_jax.evals import runner
    from oq2vl_jax.evals.tasks.demo import DemoVQA

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tiny_tokenizer(os.path.join(tmp, "tok"))
        model, config = build_model(args.size, tok)
        write_demo_dataset(os.path.join(tmp, "data"), num_train=1, num_eval=1, image_size=64,
                           num_sft=args.items + args.batch, with_tokenizer=False)
        task = DemoVQA()
        items = task.load(os.path.join(tmp, "data"))
        warm, timed = items[:args.batch], items[args.batch:args.batch + args.items]
        runner.run_task(task, warm, model, os.path.join(tmp, "warm"), style="reference", batch=args.batch)
        start = time.perf_counter()
        runner.run_task(task, timed, model, os.path.join(tmp, "out"), style="reference", batch=args.batch,
                        log_every_s=1e9)
        seconds = time.perf_counter() - start
    result = {"bench": "evals_runner", "size": args.size, "device": jax.devices()[0].device_kind,
              "devices": jax.local_device_count(), "items": len(timed), "batch": args.batch,
              "tokens_per_image": config.tokens_per_image, "seconds": round(seconds, 3),
              "items_per_s": round(len(timed) / seconds, 3)}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
