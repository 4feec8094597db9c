"""Synthetic demo data and a tiny offline tokenizer, for the CPU demo and for every test.

- `write_demo_dataset(out_dir, ...)`: coloured shapes on a grey background with captions naming colour, shape and
  position ("a red circle at the top left"), written as WebDataset tar shards (`{key}.jpg|png`, `{key}.txt`,
  `{key}.json` with the attributes), train and held-out splits in separate shard directories; a few hundred LLaVA
  SFT Q/A records with their images; and the tiny tokenizer.
- `build_tiny_tokenizer(out_dir, texts=None)`: a byte-level BPE tokenizer (vocab <= 768) trained offline with
  `tokenizers` on the demo vocabulary, saved as tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast), with
  the Qwen2 special tokens `<|endoftext|>` (pad), `<|im_start|>`, `<|im_end|>` (eos). `load_tokenizer` adds `<s>` and
  `<|endofchunk|>` on top, as for the real Qwen2 tokenizer.
- `COLOURS`, `SHAPES`, `POSITIONS` and `attributes_in_text` let a trainer score whether generated text names the
  attributes of held-out images.
"""

from __future__ import annotations

import io
import json
import os
import random
from typing import Iterable, Mapping

from PIL import Image, ImageDraw

from oq2vl_jax.data.sources.webdataset import write_tar_shard

COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (250, 140, 20), "white": (250, 250, 250), "black": (10, 10, 10),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
BACKGROUND = (128, 128, 128)
CAPTION_TEMPLATES = (
    "a {colour} {shape} {where}",
    "a photo of a {colour} {shape} {where}",
    "there is a {colour} {shape} {where}",
    "{where_cap}, a {colour} {shape}",
)
QUESTIONS = (
    ("What colour is the shape?", "{colour}"),
    ("What shape is in the image?", "a {shape}"),
    ("Where is the {shape}?", "{where}"),
    ("Describe the image.", "a {colour} {shape} {where}"),
    ("Is there a {colour} shape in the image? Answer Yes or No.", "Yes"),
    ("Is the shape a {other_shape}? Answer Yes or No.", "No"),
)
# Extra words so the BPE vocabulary is not only the demo vocabulary (chat template, eval prompts, single tokens).
_EXTRA_TEXT = (
    "You are a helpful assistant. system user assistant Question: Answer: True False Yes No A B C D "
    "the image shows describe what where which colour color shape position left right top bottom center middle "
    "is are there this that of in on at with and or not a an one two three four five six seven eight nine ten",
    "A small dog runs across the green grass in the park while children play near the old wooden house.",
    "The man is holding a cup of coffee and reading a newspaper at the table by the window.",
    "Two people walking on the beach at sunset, with boats on the water and mountains in the background.",
    "A plate of food with rice, chicken and vegetables; a glass of water; a fork and a knife.",
    "Please answer the question with a single word or phrase. How many objects are shown? Why? Because.",
    "street car bus train city building sky cloud tree flower bird cat horse woman girl boy people sign text",
    "Yes\nNo\nTrue\nFalse\nA\nB\nC\nD",  # single tokens also at the start of a text (answer scoring)
)


def where_phrase(position: str) -> str:
    return "in the center" if position == "center" else f"at the {position}"


def caption_for(colour: str, shape: str, position: str, template: int = 0) -> str:
    where = where_phrase(position)
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
        colour=colour, shape=shape, where=where, where_cap=where[0].upper() + where[1:])


def attributes_in_text(text: str) -> dict[str, str | None]:
    """The first colour, shape and position named in `text` (None where none is named)."""
    low = " ".join(text.lower().replace(",", " ").replace(".", " ").split())

    def first(options: Iterable[str]) -> str | None:
        hits = [(low.find(o), o) for o in options if f" {o} " in f" {low} "]
        return min(hits)[1] if hits else None

    return {"colour": first(COLOURS), "shape": first(SHAPES), "position": first(POSITIONS)}


def score_attributes(text: str, truth: Mapping[str, str]) -> float:
    """Fraction of the true attributes (colour, shape, position) that `text` names first."""
    found = attributes_in_text(text)
    keys = ("colour", "shape", "position")
    return sum(found[k] == truth[k] for k in keys) / len(keys)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    import math  # star: 5 outer + 5 inner points
    return [(cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
             cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5)) for i in range(10)]


def draw_shape(colour: str, shape: str, position: str, image_size: int, rng: random.Random) -> Image.Image:
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    r = image_size * rng.uniform(0.12, 0.18)
    quarter, jitter = image_size / 4, image_size * 0.04
    cx = {"left": quarter, "right": 3 * quarter}.get(position.split()[-1], 2 * quarter) + rng.uniform(-jitter, jitter)
    cy = {"top": quarter, "bottom": 3 * quarter}.get(position.split()[0], 2 * quarter) + rng.uniform(-jitter, jitter)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=fill)
    return img


def encode_image(img: Image.Image, ext: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    if ext in ("jpg", "jpeg"):
        img.save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=ext.upper())
    return buf.getvalue()


def _random_sample(rng: random.Random, image_size: int, index: int, split: str) -> tuple[dict, dict]:
    colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS)
    caption = caption_for(colour, shape, position, rng.randrange(len(CAPTION_TEMPLATES)))
    ext = "png" if index % 4 == 3 else "jpg"
    key = f"{split}{index:06d}"
    meta = {"key": key, "colour": colour, "shape": shape, "position": position, "caption": caption}
    image = encode_image(draw_shape(colour, shape, position, image_size, rng), ext)
    return {"__key__": key, ext: image, "txt": caption, "json": meta}, meta


def _write_split(split_dir: str, split: str, num: int, image_size: int, rng: random.Random,
                 shard_size: int) -> list[dict]:
    metas, samples, shard = [], [], 0
    for i in range(num):
        sample, meta = _random_sample(rng, image_size, i, split)
        samples.append(sample)
        metas.append(meta)
        if len(samples) == shard_size or i == num - 1:
            write_tar_shard(os.path.join(split_dir, f"{shard:05d}.tar"), samples)
            samples, shard = [], shard + 1
    return metas


def _write_sft(sft_dir: str, num: int, image_size: int, rng: random.Random) -> str:
    os.makedirs(os.path.join(sft_dir, "images"), exist_ok=True)
    records = []
    for i in range(num):
        colour, shape, position = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(POSITIONS)
        rel = f"images/{i:05d}.png"
        draw_shape(colour, shape, position, image_size, rng).save(os.path.join(sft_dir, rel))
        fields = {"colour": colour, "shape": shape, "where": where_phrase(position),
                  "other_shape": rng.choice([s for s in SHAPES if s != shape])}
        turns = []
        for t, (q, a) in enumerate(rng.sample(QUESTIONS, rng.choice((1, 1, 2)))):
            turns.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + q.format(**fields)})
            turns.append({"from": "gpt", "value": a.format(**fields)})
        records.append({"id": f"sft{i:05d}", "image": rel, "conversations": turns})
    path = os.path.join(sft_dir, "llava.json")
    with open(path, "w") as f:
        json.dump(records, f)
    return path


def demo_texts() -> list[str]:
    """The demo vocabulary as text: every caption template x attribute, the SFT questions, a few extra words."""
    texts = [caption_for(c, s, p, t) for c in COLOURS for s in SHAPES for p in POSITIONS
             for t in range(len(CAPTION_TEMPLATES))]
    for q, a in QUESTIONS:
        for c in COLOURS:
            for s in SHAPES:
                f = {"colour": c, "shape": s, "where": where_phrase(POSITIONS[len(c) % 5]), "other_shape": s}
                texts.append(q.format(**f) + "\n" + a.format(**f))
    return texts + list(_EXTRA_TEXT) * 20


def build_tiny_tokenizer(out_dir: str, texts: Iterable[str] | None = None, vocab_size: int = 768) -> str:
    """Trains a byte-level BPE tokenizer offline and saves it as an HF tokenizer directory; returns out_dir.

    The pre-tokenizer is Qwen2's split regex + byte-level, so tokenization behaves like the real one in kind. Loads
    with `AutoTokenizer.from_pretrained(out_dir)` (PreTrainedTokenizerFast) offline. Deterministic for given texts.
    """
    from oq2vl_jax.text.bpe import train_bpe_tokenizer

    return train_bpe_tokenizer(out_dir, demo_texts() + list(texts or []), vocab_size)


def write_demo_dataset(out_dir: str, num_train: int = 512, num_eval: int = 64, image_size: int = 64, seed: int = 0,
                       *, num_sft: int = 300, shard_size: int = 128, with_tokenizer: bool = True) -> dict[str, str]:
    """Writes the demo set; returns {"train", "eval": shard dirs, "eval_meta": JSONL of held-out attributes,
    "sft_json", "sft_image_root", "tokenizer_dir" (when with_tokenizer)}."""
    rng = random.Random(seed)
    paths = {"train": os.path.join(out_dir, "train"), "eval": os.path.join(out_dir, "eval")}
    train_meta = _write_split(paths["train"], "train", num_train, image_size, rng, shard_size)
    eval_meta = _write_split(paths["eval"], "eval", num_eval, image_size, rng, shard_size)
    paths["eval_meta"] = os.path.join(out_dir, "eval_attributes.jsonl")
    with open(paths["eval_meta"], "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in eval_meta)
    paths["sft_image_root"] = os.path.join(out_dir, "sft")
    paths["sft_json"] = _write_sft(paths["sft_image_root"], num_sft, image_size, rng)
    if with_tokenizer:
        captions = [m["caption"] for m in train_meta]
        paths["tokenizer_dir"] = build_tiny_tokenizer(os.path.join(out_dir, "tokenizer"), captions)
    return paths
