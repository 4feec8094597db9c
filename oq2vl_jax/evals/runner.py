"""The shared runner: items -> batched model calls -> per-item records -> summary, resumable and data-parallel.

Per task, OUT/<task>/predictions.jsonl holds one JSON record per finished item (outputs and both per-item scores),
appended and fsync'ed after every batch. A rerun reads it, skips the finished items and ends with the same
summary: records are aggregated in item order, and the one random draw an item may need (MMMU's guess) is seeded
by (seed, task, item id), so neither order, batch size nor sharding changes a score. A killed run can leave a partial
last line; it is cut off before appending.

Data parallel: every process loads the same items and finished set, takes items rank::count of the pending ones,
and runs the same number of batches (short ones padded with a repeat whose result is dropped), since the model
calls are collective over the device mesh. Each process appends to its own part file; after the last batch the first
process merges the parts into predictions.jsonl.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Sequence

from absl import logging

from oq2vl_jax.errors import UserError
from oq2vl_jax.evals.kit import EvalModel, Item, Request, Task, item_rng

PREDICTIONS = "predictions.jsonl"


def read_records(path: str, *, repair: bool = False) -> list[dict]:
    """Complete records of a predictions file. A partial or unparsable last line (a killed writer) is ignored, and
    with `repair` cut off so that appending continues on a clean line; damage before the last line is an error."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records, good_end = [], 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if not line.strip():
            if not last:
                good_end += len(line) + 1
            continue
        try:
            if last:  # no newline after it: the writer died mid-line
                raise ValueError("unterminated last line")
            records.append(json.loads(line))
            good_end += len(line) + 1
        except ValueError:
            if not last and i != len(lines) - 2:
                raise UserError(f"{path}: line {i + 1} is damaged; move the file away to rerun those items")
            break
    if repair and good_end < len(data):
        logging.warning("%s: dropping a partial last record (%d bytes) from an interrupted run", path,
                        len(data) - good_end)
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def _append(path: str, records: Sequence[dict]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Progress:
    """Log lines with done/total, rate and ETA, at most every `every_s` seconds (and at the end)."""

    def __init__(self, label: str, total: int, every_s: float = 10.0):
        self.label, self.total, self.every_s = label, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta / 60:.1f} min" if math.isfinite(eta) else "?"
        logging.info("%s: %d/%d items, %.2f items/s, ETA %s", self.label, self.done, self.total, rate, eta_s)

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)


def _call_model(model: EvalModel, batch: Sequence[dict[str, Request]]) -> list[dict]:
    """One generate call and one score call for all requests of a batch of items."""
    gen = [(i, name, r) for i, reqs in enumerate(batch) for name, r in reqs.items() if r.kind == "generate"]
    sco = [(i, name, r) for i, reqs in enumerate(batch) for name, r in reqs.items() if r.kind == "score"]
    outputs: list[dict] = [{} for _ in batch]
    if gen:
        texts = model.generate([r for _, _, r in gen])
        for (i, name, _), t in zip(gen, texts, strict=True):
            outputs[i][name] = t
    if sco:
        probs = model.score([r for _, _, r in sco])
        for (i, name, _), p in zip(sco, probs, strict=True):
            outputs[i][name] = [float(x) for x in p]
    return outputs


def run_task(task: Task, items: Sequence[Item], model: EvalModel, out_dir: str, *, style: str, batch: int = 8,
             seed: int = 0, process_index: int = 0, process_count: int = 1,
             barrier: Callable[[str], None] | None = None, log_every_s: float = 10.0) -> list[dict]:
    """Evaluates the unfinished items; returns all records of the task in item order."""
    if batch < 1:
        raise UserError(f"--batch must be >= 1, got {batch}")
    task_dir = os.path.join(out_dir, task.name)
    os.makedirs(task_dir, exist_ok=True)
    main_path = os.path.join(task_dir, PREDICTIONS)
    part_paths = [os.path.join(task_dir, f"predictions.part{r}.jsonl") for r in range(process_count)]
    if barrier is None:
        barrier = lambda name: None  # noqa: E731 (one process)
    my_part = part_paths[process_index] if process_count > 1 else main_path
    if process_index == 0:
        read_records(main_path, repair=True)
    if process_count > 1:
        read_records(my_part, repair=True)
    barrier(f"{task.name}-repaired")
    # every process reads the same finished set before any of them appends again, so all shard alike
    known = {it.id for it in items}
    done = {r["id"] for p in [main_path] + (part_paths if process_count > 1 else []) for r in read_records(p)}
    barrier(f"{task.name}-planned")
    pending = [it for it in items if it.id not in done]
    mine = pending[process_index::process_count]
    n_batches = math.ceil(math.ceil(len(pending) / process_count) / batch) if pending else 0
    progress = Progress(f"{task.name} (process {process_index})" if process_count > 1 else task.name,
                        len(mine), log_every_s)
    if pending:
        logging.info("%s: %d items, %d done before, %d to run in %d batches of %d per process", task.name,
                     len(items), len(done & known), len(pending), n_batches, batch)
    for b in range(n_batches):
        chunk = list(mine[b * batch:(b + 1) * batch])
        real = len(chunk)
        filler = chunk[-1] if chunk else pending[0]
        chunk += [filler] * (batch - real if n_batches > 1 or process_count > 1 else 0)
        requests = [task.requests(it, style) for it in chunk]
        outputs = _call_model(model, requests)
        records = []
        for it, reqs, out in zip(chunk[:real], requests[:real], outputs[:real]):
            rec = {"id": it.id, "category": it.category, "outputs": out}
            if hasattr(model, "prompt_text"):  # the exact prompt per request (lmms-eval's --log_samples)
                rec["prompts"] = {name: model.prompt_text(r) for name, r in reqs.items()}
            rec.update(task.score(it, out, item_rng(seed, task.name, it.id)))
            records.append(rec)
        _append(my_part, records)
        progress.update(real, force=b == n_batches - 1)
    barrier(f"{task.name}-done")
    if process_count > 1 and process_index == 0:
        merged = {r["id"]: r for r in read_records(main_path)}
        for p in part_paths:
            merged.update({r["id"]: r for r in read_records(p)})
        ordered = [merged[it.id] for it in items if it.id in merged]
        write_text_atomic(main_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
        for p in part_paths:
            if os.path.exists(p):
                os.remove(p)
    barrier(f"{task.name}-merged")
    by_id = {r["id"]: r for r in read_records(main_path)}
    return [by_id[it.id] for it in items if it.id in by_id]


def summarize(task: Task, items: Sequence[Item], records: list[dict]) -> dict:
    metrics = task.aggregate(records) if records else {}
    return {"description": task.description, "items": len(items), "scored": len(records),
            "complete": len(records) == len(items), **metrics}
