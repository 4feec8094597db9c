"""The task kit: what a task hands the model and what it gets back (items, requests, the small model protocol), and
the task contract every benchmark module follows, with the default aggregation.

A task turns each benchmark record into an `Item` and each item into one or more named `Request`s. A request either
asks for generated text (`kind="generate"`) or for the probabilities of single-token candidate answers at the first
generated position (`kind="score"`, the original harness's `return_string_probabilities`). The runner batches
requests and calls an `EvalModel`; the inference package provides one, tests use a scripted fake.

A `Task` loads its published files into `Item`s, builds the named requests of an item for a prompt style, scores one
item's outputs with both scorers (`strict` and `reference`, each a number in [0, 1]; POPE adds its predicted label),
and aggregates the per-item records into metrics. Scores in summaries are percentages.
"""

from __future__ import annotations

import dataclasses
import random
from collections import defaultdict
from typing import Any, Iterable, Protocol, Sequence, Union

# An image as the task found it: encoded bytes (parquet / TSV / base64) or a path to a file.
ImageRef = Union[bytes, str]
IMAGE_MARKER = "<image>"


@dataclasses.dataclass(frozen=True)
class Item:
    """One benchmark question. `id` is unique within the task and stable across runs (resume and compare key)."""
    id: str
    images: tuple[ImageRef, ...]
    fields: dict[str, Any]
    category: str = ""


@dataclasses.dataclass(frozen=True)
class Request:
    """One model call. Every `<image>` in `prompt` marks where the next image of `images` goes.

    `template` "base": `prompt` is the whole text and the model prepends only its BOS (the original's
    `generate_batch` always prepends one `<s>`). `template` "chat": `prompt` is the user message and the model
    renders it in the SFT chat format with the generation prompt (`oq2vl_jax.text.chat`, "open_qwen2vl").
    For `generate`, decoding is greedy; it ends after `max_new_tokens`, after the first generated token whose text is
    one of `stop` (that token is kept, as Hugging Face keeps an EOS it stopped on), or at the model's EOS; the text is
    decoded without special tokens and stripped. For `score`, `candidates` are strings that must be single tokens; the model
    returns their first-step probabilities renormalised over the candidates.
    """
    prompt: str
    images: tuple[ImageRef, ...]
    kind: str = "generate"
    template: str = "base"
    max_new_tokens: int = 16
    stop: tuple[str, ...] = ()
    candidates: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("generate", "score"):
            raise ValueError(f"Request.kind must be 'generate' or 'score', got {self.kind!r}")
        if self.template not in ("base", "chat"):
            raise ValueError(f"Request.template must be 'base' or 'chat', got {self.template!r}")
        if self.kind == "score" and not self.candidates:
            raise ValueError("a score request needs candidates")
        if self.prompt.count(IMAGE_MARKER) != len(self.images):
            raise ValueError(f"prompt has {self.prompt.count(IMAGE_MARKER)} {IMAGE_MARKER} markers but "
                             f"{len(self.images)} images")


class EvalModel(Protocol):
    """What the runner needs from a model. Both calls are batched and deterministic."""

    def generate(self, requests: Sequence[Request]) -> list[str]:
        """Greedy continuation text per request."""

    def score(self, requests: Sequence[Request]) -> list[list[float]]:
        """Per request, the renormalised first-token probabilities of its candidates (same order)."""


SCORERS = ("strict", "reference")


class Task:
    name: str = ""
    description: str = ""

    def load(self, data_dir: str) -> list[Item]:
        raise NotImplementedError

    def requests(self, item: Item, style: str) -> dict[str, Request]:
        raise NotImplementedError

    def score(self, item: Item, outputs: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        """-> {"strict": float, "reference": float, "answer": gold shown in reports, optional extras}."""
        raise NotImplementedError

    def aggregate(self, records: list[dict]) -> dict[str, dict]:
        return {s: mean_metrics(records, s) for s in SCORERS}


def percent(values: Iterable[float]) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def mean_metrics(records: list[dict], scorer: str) -> dict:
    """{"score": mean %, "n": count, "by_category": {category: mean %}} (categories only when there are several)."""
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_cat[r.get("category", "")].append(r[scorer])
    out = {"score": percent(r[scorer] for r in records), "n": len(records)}
    if len(by_cat) > 1:
        out["by_category"] = {c: percent(v) for c, v in sorted(by_cat.items())}
    return out


def item_rng(seed: int, task: str, item_id: str) -> random.Random:
    """The random source of one item's fallback guess: fixed by (seed, task, item), independent of order and
    sharding, so a resumed or data-parallel run draws the same guesses."""
    return random.Random(f"{seed}/{task}/{item_id}")
