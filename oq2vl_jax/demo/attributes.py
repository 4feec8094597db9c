"""The CPU demo's task: how well a model names the colour, shape and position of held-out synthetic images
(oq2vl_jax/demo/shapes.py), with real images, with blank images, and the best image-blind rate for comparison."""

from __future__ import annotations

import json
import os
import tarfile

import jax
import jax.numpy as jnp
import numpy as np

from oq2vl_jax.data.images import decode_image
from oq2vl_jax.text.documents import TextEncoder, caption_document
from oq2vl_jax.text.tokens import load_tokenizer

ATTRIBUTES = ("colour", "shape", "position")


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


def attribute_scores(apply, params, paths: dict, tokenizer_dir: str, *, tokens_per_image: int, row_length: int,
                     image_size: int) -> dict:
    """Teacher-forced argmax accuracy on the colour / shape / position words of held-out captions.

    Each held-out caption document `<s> [image] \\n caption <|im_end|>` is one row; an attribute counts as named when
    the argmax prediction of every one of its tokens equals the caption's token. Reported with the real images, with
    blank (all-zero) images, and the best image-blind rate: the most frequent training value of each attribute given
    the two words before it. `apply(params, batch) -> logits`; `paths` as written by `data.demo.write_demo_dataset`.
    """
    encoder = TextEncoder.from_tokenizer(load_tokenizer(tokenizer_dir, row_length))
    with open(paths["eval_meta"]) as f:
        metas = [json.loads(line) for line in f]
    images = _read_shard_images(paths["eval"])
    t_img = tokens_per_image
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
        pixels[r, 0] = decode_image(images[meta["key"]], image_size)[0]
        encoding = encoder.backend.encode("\n" + meta["caption"], add_special_tokens=False)
        offset = 1 + t_img  # tokens of "\n"+caption start after <s> and the image block
        row = {}
        for attr, (a, b) in _attribute_spans(meta["caption"], meta).items():
            toks = [(offset + i - 1, tok) for i, (tok, (s, e)) in enumerate(zip(encoding.ids, encoding.offsets))
                    if s - 1 < b and e - 1 > a and offset + i < length]
            row[attr] = toks
        targets.append(row)
    logits_fn = jax.jit(lambda p, batch: jnp.argmax(apply(p, batch), axis=-1))
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


def score_lines(scores: dict) -> list[str]:
    return [f"held-out attributes, {condition.replace('_', ' ')}: "
            + ", ".join(f"{a} {100 * values[a]:.1f}%" for a in ATTRIBUTES) for condition, values in scores.items()]
