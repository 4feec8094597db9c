"""Synthetic SFT conversations about the demo's coloured shapes, for `configs/demo_sft.py` (pre-train, then SFT, on CPU).

`write_sft_demo(out_dir, ...)` draws new demo images (demo/shapes.py `draw_shape`) and writes LLaVA-format JSON files
`train.json` and `eval.json` (held-out images) with their images under `images/`:

  - image conversations of 1-3 turns from `IMAGE_QUESTIONS` ("What colour is the shape?" -> "Red."), the first user
    turn starting with "<image>\\n";
  - every `text_only_every`-th conversation is text-only (`TEXT_QUESTIONS`: "How many sides does a square have?" ->
    "Four."), so batches mix rows with and without images.

Each record also lists the kind of each answer ("answer_kinds": colour, shape, position, describe, text) for the
held-out score (demo/answers.py); the LLaVA source ignores the extra key.

`prepare_sft_demo(config, workdir)` writes the set once into `demo_sft.data_dir` (default WORKDIR/sft_data; a new or
empty directory, or an earlier set carrying the marker `paths.json`; anything else is refused, never overwritten)
and points `data.sources` / `data.eval_sources` at it unless the user gave sources.
"""

from __future__ import annotations

import json
import os
import random

from absl import logging

from oq2vl_jax.demo import shapes as demo
from oq2vl_jax.demo.setup import local_paths, read_marker, write_marked_dir
from oq2vl_jax.storage import paths as storage

IMAGE_QUESTIONS = {
    "colour": ("What colour is the shape?", "{Colour}."),
    "shape": ("What shape is in the image?", "A {shape}."),
    "position": ("Where is the shape?", "{Where}."),
    "describe": ("Describe the image.", "A {colour} {shape} {where}."),
}
SIDES = {"triangle": "Three.", "square": "Four.", "diamond": "Four.", "circle": "None.", "star": "Ten."}
TEXT_QUESTIONS = [(f"How many sides does a {shape} have?", answer) for shape, answer in SIDES.items()]
SFT_KEYS = ("train", "eval", "image_root")  # what its marker names (demo/setup.py)


def _conversation(rng: random.Random, colour: str, shape: str, position: str) -> tuple[list[dict], list[str]]:
    where = demo.where_phrase(position)
    fields = {"colour": colour, "Colour": colour.capitalize(), "shape": shape, "where": where,
              "Where": where[0].upper() + where[1:]}
    kinds = rng.sample(list(IMAGE_QUESTIONS), rng.choice((1, 1, 2, 3)))
    turns = []
    for t, kind in enumerate(kinds):
        question, answer = IMAGE_QUESTIONS[kind]
        turns.append({"from": "human", "value": ("<image>\n" if t == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer.format(**fields)})
    return turns, kinds


def _split(out_dir: str, split: str, num: int, image_size: int, rng: random.Random, text_only_every: int) -> str:
    records = []
    for i in range(num):
        if text_only_every and i % text_only_every == text_only_every - 1:
            picked = rng.sample(TEXT_QUESTIONS, rng.choice((1, 2)))
            turns = [t for q, a in picked for t in ({"from": "human", "value": q}, {"from": "gpt", "value": a})]
            records.append({"id": f"{split}{i:05d}", "conversations": turns, "answer_kinds": ["text"] * len(picked)})
            continue
        colour, shape, position = rng.choice(list(demo.COLOURS)), rng.choice(demo.SHAPES), rng.choice(demo.POSITIONS)
        rel = f"images/{split}{i:05d}.png"
        demo.draw_shape(colour, shape, position, image_size, rng).save(os.path.join(out_dir, rel))
        turns, kinds = _conversation(rng, colour, shape, position)
        records.append({"id": f"{split}{i:05d}", "image": rel, "conversations": turns, "answer_kinds": kinds,
                        "colour": colour, "shape": shape, "position": position})
    path = os.path.join(out_dir, f"{split}.json")
    with open(path, "w") as f:
        json.dump(records, f, indent=0)
    return path


def write_sft_demo(out_dir: str, *, num_train: int = 2000, num_eval: int = 200, image_size: int = 32, seed: int = 1,
                   text_only_every: int = 6) -> dict[str, str]:
    """Writes train.json / eval.json / images/ into out_dir; returns {"train", "eval", "image_root"}."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    return {"train": _split(out_dir, "train", num_train, image_size, rng, text_only_every),
            "eval": _split(out_dir, "eval", num_eval, image_size, rng, text_only_every), "image_root": out_dir}


def prepare_sft_demo(config, workdir: str) -> dict | None:
    """Writes the SFT demo set once and points config.data at it (module doc); None without a demo_sft block."""
    if "demo_sft" not in config:
        return None
    d = config.demo_sft
    if config.data.sources:
        logging.info("demo_sft: data.sources given; the synthetic SFT set is not used")
        return None
    data_dir = storage.resolve(d.data_dir or storage.join(workdir, "sft_data"))  # may be a bucket prefix
    paths = read_marker(data_dir, SFT_KEYS)
    if paths is None:
        logging.info("demo_sft: writing synthetic SFT conversations to %s", data_dir)
        paths = write_marked_dir(data_dir, lambda tmp: write_sft_demo(
            tmp, num_train=int(d.num_train), num_eval=int(d.num_eval), image_size=int(config.data.image_size),
            seed=int(d.seed), text_only_every=int(d.text_only_every)), field="demo_sft.data_dir", keys=SFT_KEYS)
    spec = {"kind": "llava", "image_root": paths["image_root"]}
    config.data.sources = ({**spec, "path": paths["train"]},)
    if not config.data.eval_sources:
        config.data.eval_sources = ({**spec, "path": paths["eval"]},)
    logging.info("demo_sft: data.sources -> %s, data.eval_sources -> %s", paths["train"], paths["eval"])
    return local_paths(paths)  # the answer scores read local files (copies of a bucket set's)
