"""`python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo`: train (or resume) a VLM.

Prints progress lines, the final loss and where the checkpoint landed. With the demo config it first writes the
synthetic demo data (once, into --workdir or demo.data_dir) and at the end scores how well the model names the
colour, shape and position of held-out images (see `attribute_scores`).

`--dry_run` builds the abstract train state and its shardings on a simulated device count (an AbstractMesh: no
devices, no weights, no data) and prints per-device memory estimates.
"""

from __future__ import annotations

import json
import logging as std_logging
import math
import os
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from oq2vl_jax import parallel
from oq2vl_jax.data import demo_setup
from oq2vl_jax.errors import UserError

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> dict:
    """Flags exist only when the trainer is the program (importing this module defines none)."""
    return {
        "config": config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "demo.py"),
                                                  "Training config file (configs/*.py)."),
        "workdir": flags.DEFINE_string("workdir", "runs/demo", "Run directory: checkpoints, metrics, demo data."),
        "dry_run": flags.DEFINE_bool("dry_run", False,
                                     "Build the abstract state and shardings only; print memory estimates."),
        "dry_run_devices": flags.DEFINE_integer("dry_run_devices", 0,
                                                "Simulated device count for --dry_run (0 = hardware.num_devices)."),
    }

ATTRIBUTES = ("colour", "shape", "position")


# ----------------------------------------------------------------------------------------------------------------
# Demo data and the held-out attribute score


def _read_shard_images(shard_dir: str) -> dict[str, bytes]:
    images = {}
    for name in sorted(os.listdir(shard_dir)):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(shard_dir, name)) as tar:
                for member in tar.getmembers():
                    key, _, ext = member.name.rpartition(".")
                    if ext in ("jpg", "png"):
                        images[key] = tar.extractfile(member).read()
    return images


def _attribute_spans(caption: str, meta: dict) -> dict[str, tuple[int, int]]:
    low = caption.lower()
    spans = {}
    for attr in ATTRIBUTES:
        start = low.find(meta[attr])
        spans[attr] = (start, start + len(meta[attr]))
    return spans


def _context(caption: str, start: int) -> str:
    """The two words before an attribute: the only text cue to its value ('in the' -> center)."""
    return " ".join(caption[:start].lower().replace(",", " ").split()[-2:])


def attribute_scores(result, paths: dict, tokenizer_dir: str, *, row_length: int, image_size: int) -> dict:
    """Teacher-forced argmax accuracy on the colour / shape / position words of held-out captions.

    Each held-out caption document `<s> [image] \\n caption <|im_end|>` is one row; an attribute counts as named when
    the argmax prediction of every one of its tokens equals the caption's token. Reported with the real images, with
    blank (all-zero) images, and the best image-blind rate: the most frequent training value of each attribute given
    the two words before it.
    """
    from oq2vl_jax.data.images import load_image
    from oq2vl_jax.data.tokenizer import TextEncoder, caption_document, load_tokenizer

    encoder = TextEncoder.from_tokenizer(load_tokenizer(tokenizer_dir, row_length))
    with open(paths["eval_meta"]) as f:
        metas = [json.loads(line) for line in f]
    images = _read_shard_images(paths["eval"])
    t_img = result.model_config.tokens_per_image
    n = len(metas)
    ids = np.zeros((n, row_length), np.int32)
    seg, pos, image_mask = np.zeros_like(ids), np.zeros_like(ids), np.zeros((n, row_length), np.bool_)
    pixels = np.zeros((n, 1, image_size, image_size, 3), np.uint8)
    targets = []  # per row: {attribute: [(position predicting, token id), ...]}
    for r, meta in enumerate(metas):
        doc = caption_document(encoder, meta["caption"], t_img)
        length = min(doc.length, row_length)
        ids[r, :length], seg[r, :length], pos[r, :length] = doc.ids[:length], 1, np.arange(length)
        image_mask[r, :length] = doc.image_mask[:length]
        pixels[r, 0] = load_image(images[meta["key"]], image_size)[0]
        encoding = encoder.backend.encode("\n" + meta["caption"], add_special_tokens=False)
        offset = 1 + t_img  # tokens of "\n"+caption start after <s> and the image block
        row = {}
        for attr, (a, b) in _attribute_spans(meta["caption"], meta).items():
            toks = [(offset + i - 1, tok) for i, (tok, (s, e)) in enumerate(zip(encoding.ids, encoding.offsets))
                    if s - 1 < b and e - 1 > a and offset + i < length]
            row[attr] = toks
        targets.append(row)
    params = jax.device_get(dict(result.state.trainable) | dict(result.state.frozen))
    logits_fn = jax.jit(lambda p, batch: jnp.argmax(result.parts.model(p)(batch), axis=-1))
    base = {"input_ids": ids, "segment_ids": seg, "positions": pos, "image_mask": image_mask,
            "image_valid": np.ones((n, 1), np.bool_)}
    scores = {}
    for condition, imgs in (("with_images", pixels), ("blank_images", np.zeros_like(pixels))):
        predicted = np.asarray(logits_fn(params, {**base, "images": imgs}))
        scores[condition] = {attr: float(np.mean([all(predicted[r, p] == tok for p, tok in targets[r][attr])
                                                  for r in range(n)])) for attr in ATTRIBUTES}
    scores["image_blind_best"] = _blind_baseline(paths, metas)
    return scores


def _blind_baseline(paths: dict, eval_metas: list[dict]) -> dict:
    train_metas = []
    for name in sorted(os.listdir(paths["train"])):
        if name.endswith(".tar"):
            with tarfile.open(os.path.join(paths["train"], name)) as tar:
                train_metas += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers()
                                if m.name.endswith(".json")]
    out = {}
    for attr in ATTRIBUTES:
        counts: dict[str, dict[str, int]] = {}
        for m in train_metas:
            ctx = _context(m["caption"], _attribute_spans(m["caption"], m)[attr][0])
            counts.setdefault(ctx, {}).setdefault(m[attr], 0)
            counts[ctx][m[attr]] += 1
        overall: dict[str, int] = {}
        for c in counts.values():
            for value, k in c.items():
                overall[value] = overall.get(value, 0) + k
        hits = 0
        for m in eval_metas:
            c = counts.get(_context(m["caption"], _attribute_spans(m["caption"], m)[attr][0]), overall)
            hits += max(c, key=c.get) == m[attr]
        out[attr] = hits / max(len(eval_metas), 1)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Dry run


def _bytes_per_device(tree) -> float:
    return float(sum(math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
                     for x in jax.tree.leaves(tree)))


def dry_run(config, num_devices: int) -> str:
    """Abstract state + shardings on an AbstractMesh of num_devices; per-device memory estimates as text."""
    from oq2vl_jax.training import loop
    from oq2vl_jax.training.state import ModelParts, split_params

    num_devices = num_devices or int(config.hardware.num_devices)
    slices = int(config.hardware.get("num_slices", 1))
    ici, dcn = parallel.mesh_shapes(config.mesh, num_devices, slices)
    shape = tuple(a * b for a, b in zip(ici, dcn))
    mesh = jax.sharding.AbstractMesh(shape, parallel.MESH_AXES)
    loop.validate_config(config, mesh, check_paths=False)
    vlm = loop.preset_model_config(config, int(config.model.vocab_size))
    parts = ModelParts(vlm, loop.model_options(config.model))
    stage = config.train.stage
    trainable, frozen = split_params(parts.abstract_params, stage)
    _, abstract, _ = loop.optimizer_and_state(config, parts, mesh)
    gib = 1024.0 ** 3
    count = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))  # noqa: E731
    t, m, llm = config.train, config.model, vlm.llm
    rows = t.global_batch_rows // t.micro_batches // parallel.batch_shards(mesh)
    length = int(config.data.row_length)
    act_bytes = jnp.dtype(m.compute_dtype).itemsize
    layer_in = rows * length * llm.hidden_size * act_bytes
    working = rows * length * (4 * llm.hidden_size + 3 * llm.intermediate_size) * act_bytes
    saved = llm.num_layers * layer_in if m.remat != "none" else llm.num_layers * (layer_in + working)
    logits = 2 * int(m.loss_chunk) * llm.vocab_size * 4
    slots = int(config.data.max_images_per_row) or max(1, length // (vlm.tokens_per_image + 3))
    batch = t.global_batch_rows // parallel.batch_shards(mesh) * (
        length * 21 + slots * (config.data.image_size ** 2 * 3 + 1))
    lines = [f"dry run: {num_devices} devices, mesh {dict(mesh.shape)} (ici {ici}, dcn {dcn}), stage {stage}",
             f"model: {count(parts.abstract_params) / 1e9:.3f}B parameters, {count(trainable) / 1e9:.3f}B trained "
             f"(fp32 + AdamW), {count(frozen) / 1e9:.3f}B frozen ({m.frozen_dtype})",
             f"per micro-batch and device: {rows} rows of {length} tokens; {t.micro_batches} micro-batches per "
             f"update of {t.global_batch_rows} rows",
             "per-device memory (GiB):",
             f"  trained params   {_bytes_per_device(abstract.trainable) / gib:8.2f}",
             f"  frozen params    {_bytes_per_device(abstract.frozen) / gib:8.2f}",
             f"  optimizer state  {_bytes_per_device(abstract.opt_state) / gib:8.2f}",
             f"  gradients        {_bytes_per_device(abstract.trainable) / gib:8.2f}  (accumulator, fp32)",
             f"  batch            {batch / gib:8.2f}",
             f"  activations      {(saved + working + logits) / gib:8.2f}  (estimate: remat={m.remat}, one layer's "
             "working set, one loss chunk)"]
    total = (2 * _bytes_per_device(abstract.trainable) + _bytes_per_device(abstract.frozen)
             + _bytes_per_device(abstract.opt_state) + batch + saved + working + logits)
    capacity = float(config.hardware.get("device_memory_gib", 0.0))
    lines.append(f"  total            {total / gib:8.2f}" + (f"  of {capacity:.0f} GiB" if capacity else ""))
    if capacity and total / gib > 0.9 * capacity:
        lines.append("  WARNING: above 90% of device memory; raise train.micro_batches or the fsdp size")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------


class _QuietLibraries(std_logging.Filter):
    """Keeps our INFO lines and every library's warnings; drops library INFO chatter (orbax logs each save)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or f"{os.sep}oq2vl_jax{os.sep}" in record.pathname


def main(argv, flag_values: dict) -> None:
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config, workdir = flag_values["config"].value, os.path.abspath(flag_values["workdir"].value)
    try:
        if flag_values["dry_run"].value:
            print(dry_run(config, flag_values["dry_run_devices"].value))
            return
        parallel.initialize_distributed(config.distributed)
        paths = demo_setup.prepare_demo_data(config, workdir)  # None unless the demo data is used
        from oq2vl_jax.training import loop
        result = loop.run(config, workdir)
        if jax.process_index() != 0:
            return
        print(f"steps {result.start_step} -> {result.last_step} ({result.stopped_by}); first loss "
              f"{_fmt(result.first_loss)}, final loss {_fmt(result.last_loss)}"
              + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
        print(f"checkpoint: {result.checkpoint_dir}/{result.last_step}")
        scorable = jax.process_count() == 1 and result.stopped_by != "sigterm"  # the demo runs on one host
        if paths is not None and config.demo.score_attributes and scorable:
            scores = attribute_scores(result, paths, config.data.tokenizer_dir, row_length=config.demo.eval_row_length,
                                      image_size=config.data.image_size)
            for condition, values in scores.items():
                print(f"held-out attributes, {condition.replace('_', ' ')}: "
                      + ", ".join(f"{a} {100 * values[a]:.1f}%" for a in ATTRIBUTES))
            with open(os.path.join(workdir, "attribute_scores.json"), "w") as f:
                json.dump(scores, f, indent=2)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
