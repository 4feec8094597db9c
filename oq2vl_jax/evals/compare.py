"""Paired comparison of two evaluation directories (`python -m oq2vl_jax.evaluate compare OUT_A OUT_B`).

Per task and scorer: the headline score of each run (from summary.json) and B - A; over the items both runs scored,
an exact McNemar test on per-item correctness (an item counts as correct when its score is >= 0.5; only TextVQA has
fractional item scores) and a paired bootstrap 95% interval of the mean per-item score difference (percentile
method, seeded). Discordant pairs: b = right in A only, c = right in B only; p = min(1, 2 * P[Binomial(b + c, 1/2)
<= min(b, c)]), and 1 when b + c = 0.
"""

from __future__ import annotations

import json
import math
import os
import random

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals.kit import SCORERS
from oq2vl_jax.evals.runner import PREDICTIONS, read_records

BOOTSTRAP_SAMPLES = 2000


def mcnemar_exact(b: int, c: int) -> float:
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bootstrap_interval(diffs: list[float], seed: int, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """95% percentile interval of the mean of `diffs` under resampling with replacement."""
    if not diffs:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    return (means[int(0.025 * samples)], means[min(samples - 1, int(math.ceil(0.975 * samples)) - 1)])


def _load(out_dir: str) -> dict:
    path = os.path.join(out_dir, "summary.json")
    if not os.path.exists(path):
        raise UserError(f"compare: missing {path}; run `python -m oq2vl_jax.evaluate` into {out_dir} first")
    with open(path) as f:
        return json.load(f)


def compare(out_a: str, out_b: str, seed: int = 0) -> dict:
    sa, sb = _load(out_a), _load(out_b)
    result = {}
    for task in [t for t in sa.get("tasks", {}) if t in sb.get("tasks", {})]:
        ra = {r["id"]: r for r in read_records(os.path.join(out_a, task, PREDICTIONS))}
        rb = {r["id"]: r for r in read_records(os.path.join(out_b, task, PREDICTIONS))}
        common = [i for i in ra if i in rb]
        entry = {"paired_items": len(common)}
        for s in SCORERS:
            score_a = sa["tasks"][task].get(s, {}).get("score")
            score_b = sb["tasks"][task].get(s, {}).get("score")
            b = sum(1 for i in common if ra[i][s] >= 0.5 > rb[i][s])
            c = sum(1 for i in common if rb[i][s] >= 0.5 > ra[i][s])
            diffs = [100.0 * (rb[i][s] - ra[i][s]) for i in common]
            lo, hi = bootstrap_interval(diffs, seed)
            entry[s] = {"a": score_a, "b": score_b,
                        "diff": None if score_a is None or score_b is None else score_b - score_a,
                        "item_mean_diff": sum(diffs) / len(diffs) if diffs else 0.0,
                        "a_only_right": b, "b_only_right": c, "mcnemar_p": mcnemar_exact(b, c),
                        "bootstrap_95": [lo, hi]}
        result[task] = entry
    return result


def render(result: dict, out_a: str, out_b: str) -> str:
    lines = [f"A = {out_a}", f"B = {out_b}", "",
             "| task | scorer | A | B | B-A | paired | A only | B only | McNemar p | 95% CI (item mean B-A) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for task, e in result.items():
        for s in SCORERS:
            m = e[s]
            fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            lines.append(f"| {task} | {s} | {fmt(m['a'])} | {fmt(m['b'])} | {fmt(m['diff'])} | {e['paired_items']} "
                         f"| {m['a_only_right']} | {m['b_only_right']} | {m['mcnemar_p']:.4g} | "
                         f"[{m['bootstrap_95'][0]:.2f}, {m['bootstrap_95'][1]:.2f}] |")
    return "\n".join(lines) + "\n"
