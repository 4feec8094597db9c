"""One evaluation: load -> run -> summarize -> report, for the evaluate CLI and for the training hook alike.

`load` reads every task's items (all files are checked before a model is loaded); `run` runs them through the shared
runner (batched, data-parallel over processes, resumable), summarizes each task and, on process 0, writes
OUT/summary.json and OUT/report.md next to OUT/<task>/predictions.jsonl.
"""

from __future__ import annotations

from typing import Sequence

from absl import logging

from oq2vl_jax.evals import report, runner
from oq2vl_jax.evals.kit import EvalModel, Item, Task


def load(tasks: Sequence[Task], data_dir: str, limit: int = 0) -> list[tuple[Task, list[Item]]]:
    """Every task's items (the first `limit` when > 0); a missing or malformed file is a UserError."""
    loaded = []
    for task in tasks:
        items = task.load(data_dir)
        loaded.append((task, items[:limit] if limit else items))
    return loaded


def run(loaded: Sequence[tuple[Task, list[Item]]], model: EvalModel, out_dir: str, *, run_info: dict, style: str,
        batch: int, seed: int, process_index: int = 0, process_count: int = 1, barrier=None,
        log_every_s: float | None = None) -> dict:
    """Runs, summarizes and (process 0) reports the loaded tasks; returns the summary {"run": run_info, "tasks":
    {name: per-task summary}}."""
    summary: dict = {"run": run_info, "tasks": {}}
    records_by_task = {}
    progress = {} if log_every_s is None else {"log_every_s": log_every_s}
    for task, items in loaded:
        records = runner.run_task(task, items, model, out_dir, style=style, batch=batch, seed=seed,
                                  process_index=process_index, process_count=process_count, barrier=barrier,
                                  **progress)
        records_by_task[task.name] = records
        summary["tasks"][task.name] = runner.summarize(task, items, records)
    if process_index == 0:
        report.write_summary(out_dir, summary)
        report.write_report(out_dir, summary, records_by_task)
        for name, t in summary["tasks"].items():
            logging.info("%s: strict %.2f, reference %.2f (%d/%d items)", name, t.get("strict", {}).get("score", 0),
                         t.get("reference", {}).get("score", 0), t["scored"], t["items"])
    return summary
