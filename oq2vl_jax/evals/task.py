"""The task contract shared by every benchmark module, and the default aggregation.

A task loads its published files into `Item`s, builds the named requests of an item for a prompt style, scores one
item's outputs with both scorers (`strict` and `reference`, each a number in [0, 1]; POPE adds its predicted label),
and aggregates the per-item records into metrics. Scores in summaries are percentages.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any, Iterable

from oq2vl_jax.evals.api import Item, Request

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
