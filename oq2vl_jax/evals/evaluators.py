"""Evaluators run during training (`config.evals`): benchmark tasks on the live parameters, and the demo's
held-out attribute scorer.

`config.evals` is a tuple of spec strings, `NAME[:key=value,...]`, overridable on the command line, e.g.
`--config.evals='("demo:limit=32,every=100", "demo_attributes")'`:

  NAME      a task of `python -m oq2vl_jax.evaluate` (evals/registry.py), or "demo_attributes" (the demo config's
            held-out attribute score, demo/attributes.py; off with --config.demo.score_attributes=False)
  every     run every N steps (default: config.train.eval_every; 0 = only at the end of training)
  limit     the first N items (default 64; 0 = all)
  data      the benchmark directory (default for the demo tasks: the demo data directory, WORKDIR/demo_data, or
            with configs/demo_sft.py the SFT demo's, WORKDIR/sft_data)
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


def _pure(tree):
    """nnx.State / mappings -> nested plain dicts of arrays (the form VLMInference and the checkpoint use)."""
    if hasattr(tree, "to_pure_dict"):
        return tree.to_pure_dict()
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _pure(v) for k, v in tree.items()}
    return tree


class TrainingEvaluators:
    """The evaluators of one training run (`config.evals`); the loop calls `due` and `run` after each step."""

    def __init__(self, specs: list[EvalSpec], *, workdir: str, model_config, default_every: int, tokenizer_dir: str,
                 demo_data_dir: str, compute_dtype: str, demo_row_length: int, image_size: int):
        self.specs, self.workdir, self.model_config = specs, workdir, model_config
        self.default_every, self.tokenizer_dir, self.demo_data_dir = default_every, tokenizer_dir, demo_data_dir
        self.compute_dtype, self.demo_row_length, self.image_size = compute_dtype, demo_row_length, image_size

    @classmethod
    def from_config(cls, config, workdir: str, model_config, tokenizer_dir: str) -> "TrainingEvaluators | None":
        specs = parse_specs(tuple(config.get("evals", ()) or ()))
        demo = config.get("demo") or {}
        if not demo.get("score_attributes", True):  # --config.demo.score_attributes=False turns this one off
            specs = [s for s in specs if s.name != ATTRIBUTES]
        if not specs:
            return None
        import jax

        if jax.process_count() > 1:
            raise UserError("config.evals runs in single-process training only; evaluate the checkpoints with "
                            "`python -m oq2vl_jax.evaluate` instead")
        if not tokenizer_dir or not os.path.isdir(tokenizer_dir):
            raise UserError("config.evals needs the run's tokenizer (data.tokenizer_dir or the checkpoint's)")
        if "demo_sft" in config:  # configs/demo_sft.py: the demo task reads the SFT demo's held-out eval.json
            default_dir = config.demo_sft.get("data_dir") or os.path.join(workdir, "sft_data")
        else:
            default_dir = demo.get("data_dir") or os.path.join(workdir, "demo_data")
        from oq2vl_jax.storage import paths as storage
        demo_dir = storage.resolve(default_dir)
        for s in specs:
            if s.name == ATTRIBUTES and "demo" not in config:
                raise UserError("config.evals: demo_attributes needs the demo config (configs/demo.py)")
        return cls(specs, workdir=workdir, model_config=model_config, default_every=int(config.train.eval_every),
                   tokenizer_dir=tokenizer_dir, demo_data_dir=demo_dir, compute_dtype=str(config.model.compute_dtype),
                   demo_row_length=int(demo.get("eval_row_length", 64)), image_size=int(config.data.image_size))

    def due(self, step: int, last_step: int) -> bool:
        return any(s.due(step, self.default_every, last_step) for s in self.specs)

    def run(self, step: int, params, last_step: int, apply=None) -> dict[str, float]:
        """Runs the evaluators due at `step` on `params` ({"vision": ..., "projector": ..., "llm": ...});
        `apply(params, batch) -> logits` is the training model (the attribute scorer needs it)."""
        import jax

        from absl import logging

        due = [s for s in self.specs if s.due(step, self.default_every, last_step)]
        if not due:
            return {}
        host = jax.device_get(_pure(params))
        metrics: dict[str, float] = {}
        model = None
        for spec in due:
            if spec.name == ATTRIBUTES:
                from oq2vl_jax.demo import attributes as demo_attributes, setup as demo_setup

                paths = demo_setup.read_marker(self.demo_data_dir)
                if paths is None or apply is None:
                    raise UserError(f"config.evals: demo_attributes needs the demo data in {self.demo_data_dir}")
                paths = demo_setup.local_paths(paths)
                scores = demo_attributes.attribute_scores(
                    apply, host, paths, self.tokenizer_dir, tokens_per_image=self.model_config.tokens_per_image,
                    row_length=self.demo_row_length, image_size=self.image_size)
                for condition, values in scores.items():
                    metrics.update({f"eval/{ATTRIBUTES}/{condition}/{a}": 100.0 * v for a, v in values.items()})
                continue
            if model is None:
                from oq2vl_jax.evals.checkpoint_model import InferenceModel
                from oq2vl_jax.inference import VLMInference

                model = InferenceModel(VLMInference(self.model_config, host, self.tokenizer_dir,
                                                    devices=jax.local_devices(), compute_dtype=self.compute_dtype))
            out = os.path.join(self.workdir, "evals", f"step_{step}")
            metrics.update(run_benchmark(spec, model, self.demo_data_dir, out))
        logging.info("step %d evals: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in sorted(metrics.items())))
        return metrics
