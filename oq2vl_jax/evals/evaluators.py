"""Evaluators run during training (`config.evals`): benchmark tasks on the live parameters, and the demo's
held-out attribute scorer.

`config.evals` is a tuple of spec strings, `NAME[:key=value,...]`, overridable on the command line, e.g.
`--config.evals='("demo:limit=32,every=100", "demo_attributes")'`:

  NAME      a task of `python -m oq2vl_jax.evaluate` (evals/registry.py), or "demo_attributes"
  every     run every N steps (default: config.train.eval_every; 0 = only at the end of training)
  limit     the first N items (default 64; 0 = all)
  data      the benchmark directory (default: the demo data directory for the demo tasks)
  prompt    reference | chat (default reference)
  batch     items per model call (default 8)

A benchmark evaluator builds an inference model from the current parameters (`oq2vl_jax.inference`), runs the task
with the shared runner into WORKDIR/evals/step_<N>/ (predictions, summary, report) and returns the headline scores
as metrics `eval/<task>/strict` and `eval/<task>/reference`, which the trainer writes to metrics.jsonl and
TensorBoard.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from oq2vl_jax.errors import UserError

ATTRIBUTES = "demo_attributes"
DEFAULT_LIMIT = 64
_INT_KEYS = ("every", "limit", "batch", "seed")
_KEYS = _INT_KEYS + ("data", "prompt")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    name: str
    every: int | None = None
    limit: int = DEFAULT_LIMIT
    data: str = ""
    prompt: str = "reference"
    batch: int = 8
    seed: int = 0

    def due(self, step: int, default_every: int, last_step: int) -> bool:
        every = default_every if self.every is None else self.every
        return step == last_step or (every > 0 and step % every == 0)


def parse_spec(spec: str, field: str = "config.evals") -> EvalSpec:
    """"demo:limit=32,every=100" -> EvalSpec. Raises UserError naming the field and the bad part."""
    from oq2vl_jax.evals.registry import TASKS

    name, _, rest = str(spec).strip().partition(":")
    if name not in TASKS and name != ATTRIBUTES:
        raise UserError(f"{field}: unknown evaluator {name!r} in {spec!r}; known: {', '.join(TASKS)}, {ATTRIBUTES}")
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in _KEYS:
            raise UserError(f"{field}: {part!r} in {spec!r} is not KEY=VALUE with KEY one of {', '.join(_KEYS)}")
        if key in _INT_KEYS:
            try:
                values[key] = int(value)
            except ValueError:
                raise UserError(f"{field}: {key} must be an integer in {spec!r}") from None
        else:
            values[key] = value
    if values.get("prompt", "reference") not in ("reference", "chat"):
        raise UserError(f"{field}: prompt must be reference or chat in {spec!r}")
    return EvalSpec(name, **values)


def parse_specs(specs, field: str = "config.evals") -> list[EvalSpec]:
    if isinstance(specs, str):
        specs = (specs,)
    return [parse_spec(s, field) for s in specs or ()]


def run_benchmark(spec: EvalSpec, model, data_dir: str, out_dir: str) -> dict[str, float]:
    """One benchmark evaluator call on an EvalModel; returns its metrics."""
    from oq2vl_jax.evals import registry, report, runner

    task = registry.TASKS[spec.name]()
    items = task.load(spec.data or data_dir)
    items = items[:spec.limit] if spec.limit else items
    records = runner.run_task(task, items, model, out_dir, style=spec.prompt, batch=spec.batch, seed=spec.seed,
                              process_index=getattr(model, "process_index", 0),
                              process_count=getattr(model, "process_count", 1),
                              barrier=getattr(model, "barrier", None), log_every_s=60.0)
    summary = runner.summarize(task, items, records)
    if getattr(model, "process_index", 0) == 0:
        full = {"run": {"prompt": spec.prompt, "seed": spec.seed, "limit": spec.limit}, "tasks": {task.name: summary}}
        report.write_summary(out_dir, full)
        report.write_report(out_dir, full, {task.name: records})
    return {f"eval/{task.name}/strict": summary["strict"]["score"],
            f"eval/{task.name}/reference": summary["reference"]["score"]}
