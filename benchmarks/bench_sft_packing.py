"""SFT packing benchmark (a script, not a test): packed vs one-conversation-per-row SFT on the same conversations.

    python benchmarks/bench_sft_packing.py [--conversations 480] [--json out.json]

1. Fill at the paper's shapes (no model): 4096-token rows, 729 tokens per image, at most 5 images per row, on
   synthetic LLaVA-665k-like conversation lengths (90% with one image; text tokens log-normal, median ~100, long
   tail; 10% text-only, longer). Reported for "none" (one conversation per row, padded to 4096 or to the longest
   conversation of each batch of 16 as the original's collator does), "ffd" and "ffd_fill", with conversations per
   row (how the original's 128 conversations per update map to rows).
2. Training, side by side in one process (tiny demo-sized model on CPU, the real pipeline and trainer): the same
   synthetic SFT conversations (demo/sft.py, 64 image tokens per image), one epoch each,
     packed:   data.packing="ffd_fill", 512-token rows, rows per update chosen so an update holds ~16 conversations
     unpacked: data.packing="none", rows as long as the longest conversation, 16 rows (= conversations) per update
   Reported: conversations per second (after compilation; each variant runs twice per round (--rounds), in the
   order A B B A, so a shared machine's changing load favours neither; the fastest run counts, with min / median /
   max of all and the range of ratios they allow), fill, optimizer updates, and the held-out loss (token-weighted
   over answer tokens) after the same conversations (first run of each).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from oq2vl_jax.data.packing import ffd_fill_pack, ffd_pack  # noqa: E402

L, T_IMG = 4096, 729


def llava_like_lengths(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(document lengths, images per document) modelled on LLaVA-665k (synthetic: the dataset is not here)."""
    rng = np.random.default_rng(seed)
    with_image = rng.random(n) < 0.9
    text = np.where(with_image, rng.lognormal(np.log(100), 0.9, n), rng.lognormal(np.log(400), 0.8, n))
    text = np.clip(text.astype(int) + 30, 40, L - T_IMG - 8)  # + system prompt and chat wrapping
    return text + with_image * T_IMG, with_image.astype(int)


def fill_at_paper_shapes(n: int = 20000, buffer: int = 2048) -> dict:
    lengths, images = llava_like_lengths(n)
    max_images = L // (T_IMG + 3)
    out = {"documents": n, "mean_length": float(lengths.mean()), "image_share": float(images.mean())}
    batch = 16  # the original collator pads each micro-batch to its longest conversation
    padded = sum(len(g) * int(g.max()) for g in np.array_split(lengths, n // batch))
    out["none_padded_to_4096"] = {"fill": float(lengths.sum() / (n * L)), "conversations_per_row": 1.0}
    out["none_padded_to_batch_max"] = {"fill": float(lengths.sum() / padded), "conversations_per_row": 1.0}
    for name, pack in (("ffd", ffd_pack), ("ffd_fill", ffd_fill_pack)):
        rows = 0
        for start in range(0, n, buffer):
            rows += len(pack(lengths[start:start + buffer].tolist(), images[start:start + buffer].tolist(), L,
                             max_images))
        out[name] = {"fill": float(lengths.sum() / (rows * L)), "conversations_per_row": n / rows,
                     "rows_for_128_conversations": 128 * rows / n}
    return out


def training_comparison(num_conversations: int, workdir: str, rounds: int = 1) -> dict:
    import jax

    from oq2vl_jax.demo import shapes as demo
    from oq2vl_jax.demo.sft import write_sft_demo
    from oq2vl_jax.text import chat
    from oq2vl_jax.text.tokens import load_tokenizer
    from oq2vl_jax.training import loop, metrics, setup
    from oq2vl_jax.training.host import pipeline_data_factory
    from oq2vl_jax.training.step import make_eval_step

    tok_dir = demo.build_tiny_tokenizer(os.path.join(workdir, "tokenizer"))
    paths = write_sft_demo(os.path.join(workdir, "sft"), num_train=num_conversations, num_eval=96, image_size=32,
                           seed=0, text_only_every=6)
    tokenizer = load_tokenizer(tok_dir)
    with open(paths["train"]) as f:
        longest = max(chat.conversation_document(r["conversations"], "open_qwen2vl", tokenizer, 64,
                                                 num_images=int("image" in r)).layout.length for r in json.load(f))
    unpacked_length = -(-longest // 16) * 16
    spec = {"kind": "llava", "image_root": paths["image_root"]}
    per_update = 16

    def make_config(packing: str, row_length: int, rows: int):
        c = runpy.run_path(os.path.join(REPO, "configs", "demo_sft.py"))["get_config"]()
        del c["demo_sft"]
        c.init.update(source="random")
        c.data.update(sources=({**spec, "path": paths["train"]},), eval_sources=({**spec, "path": paths["eval"]},),
                      tokenizer_dir=tok_dir, packing=packing, row_length=row_length, num_epochs=1,
                      shuffle_rows=True, pack_buffer=256)
        c.train.update(num_steps=10_000, global_batch_rows=rows, log_every=1_000_000, eval_every=0)
        c.optim.update(lr=1e-3, warmup_ratio=0.0)  # constant-ish: both runs see the same schedule shape
        c.checkpoint.update(every_steps=1_000_000, async_save=False)
        c.log.tensorboard = False
        return c

    from oq2vl_jax.data.pipeline import build_iterator

    def data_pass(packing: str, row_length: int) -> dict:
        """One epoch through the pipeline alone: conversations, non-empty rows, fill."""
        c = make_config(packing, row_length, 8)
        docs = rows = real = capacity = 0
        for batch in build_iterator(c.data, tokens_per_image=64, rows_per_batch=8, seed=0, process_index=0,
                                    process_count=1):
            docs += batch["stats"]["documents"]
            rows += int((batch["segment_ids"].max(axis=1) > 0).sum())
            real += int((batch["segment_ids"] > 0).sum())
            capacity += int((batch["segment_ids"].max(axis=1) > 0).sum()) * row_length
        return {"conversations": docs, "rows": rows, "conversations_per_row": docs / rows, "fill": real / capacity}

    passes = {"packed": data_pass("ffd_fill", 512), "unpacked": data_pass("none", unpacked_length)}
    # packed rows per update chosen so an update holds ~per_update conversations, as the unpacked run's
    packed_rows = max(1, round(per_update / passes["packed"]["conversations_per_row"]))
    results = {"conversations": num_conversations, "data": passes}
    devices = jax.devices()[:1]
    variants = {"packed": ("ffd_fill", 512, packed_rows), "unpacked": ("none", unpacked_length, per_update)}
    # A B B A per round: each variant runs twice a round, in both positions, so load that changes over time (a shared
    # machine) does not favour one; the fastest of its timings (noise only slows a run down) and the first run's
    # losses are reported, with the spread of the timings and the range of ratios they allow
    for repeat, name in enumerate(("packed", "unpacked", "unpacked", "packed") * rounds):
        packing, length, batch_rows = variants[name]
        config = make_config(packing, length, batch_rows)
        run_dir = os.path.join(workdir, f"{name}{repeat}")
        start = time.perf_counter()
        result = loop.run(config, run_dir, devices=devices)
        wall = time.perf_counter() - start
        records = [r for r in metrics.read_metrics(run_dir) if "loss" in r]
        compile_time = records[0].get("first_step_time", 0.0)
        steps = result.last_step
        rate = num_conversations * (steps - 1) / steps / max(wall - compile_time, 1e-9)
        if name in results:  # the second run of this variant: timing only
            results[name]["conversations_per_s_runs"].append(rate)
            results[name]["conversations_per_s"] = max(results[name]["conversations_per_s_runs"])
            continue
        _, _, shardings = setup.optimizer_and_state(config, result.parts, result.mesh)
        eval_step = make_eval_step(result.parts, result.mesh, shardings)
        eval_config = make_config("none", unpacked_length, 16)
        eval_loss = loop.evaluate(eval_step, result.state, pipeline_data_factory(eval_config, 64), result.mesh,
                                  rows=16, global_rows=16, num_batches=0, seed=0)
        results[name] = {
            "conversations_per_s_runs": [rate],
            "row_length": length, "rows_per_update": batch_rows, "updates": steps,
            "seconds_after_first_step": wall - compile_time, "first_step_seconds": compile_time,
            # the conversations of every update after the first, over the time after the first (compilation)
            "conversations_per_s": rate,
            "fill": passes[name]["fill"], "final_train_loss": result.last_loss, "heldout_loss": eval_loss,
        }
    packed, unpacked = (results[k]["conversations_per_s_runs"] for k in ("packed", "unpacked"))
    for name in ("packed", "unpacked"):
        runs = results[name]["conversations_per_s_runs"]
        results[name]["conversations_per_s_spread"] = {"min": min(runs), "median": float(np.median(runs)),
                                                        "max": max(runs)}
    results["speedup_conversations_per_s"] = max(packed) / max(unpacked)
    results["speedup_median"] = float(np.median(packed) / np.median(unpacked))
    results["speedup_range"] = [min(packed) / max(unpacked), max(packed) / min(unpacked)]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=480)
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds of the training comparison")
    parser.add_argument("--json", default="")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_fill", action="store_true")
    args = parser.parse_args()
    out = {} if args.skip_fill else {"fill_4096_729": fill_at_paper_shapes()}
    print(json.dumps(out, indent=2))
    if not args.skip_training:
        with tempfile.TemporaryDirectory() as tmp:
            out["training"] = training_comparison(args.conversations, tmp, args.rounds)
        print(json.dumps(out["training"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
