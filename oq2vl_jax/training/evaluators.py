"""The training hook of evaluation (`config.evals`, parsed by evals/specs.py): benchmark tasks on the live
parameters and the demo's held-out attribute scorer, run by the loop every N steps.

A benchmark evaluator builds an inference model from the current parameters (`oq2vl_jax.inference`), runs the task
through the evaluation suite (evals/suite.py) into WORKDIR/evals/step_<N>/ (predictions, summary, report) and
returns the headline scores as metrics `eval/<task>/strict` and `eval/<task>/reference`, which the trainer writes to
metrics.jsonl and TensorBoard. Training imports evals; evals never imports training.
"""

from __future__ import annotations

import os

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths as storage
from oq2vl_jax.evals.specs import ATTRIBUTES, EvalSpec, parse_specs


def run_benchmark(spec: EvalSpec, model, data_dir: str, out_dir: str) -> dict[str, float]:
    """One benchmark evaluator call on an EvalModel; returns its metrics. The data and the output directory may be in a
    bucket (read from a local copy; written to a staging directory copied back whole: storage/)."""
    from oq2vl_jax.evals import registry, suite
    from oq2vl_jax.storage import local_copy
    from oq2vl_jax.storage.mirror import staged_dir

    task = registry.TASKS[spec.name]()
    loaded = suite.load([task], local_copy.local_dir(spec.data or data_dir), spec.limit)
    with staged_dir(out_dir) as out:
        summary = suite.run(loaded, model, out, run_info={"prompt": spec.prompt, "seed": spec.seed,
                                                           "limit": spec.limit},
                            style=spec.prompt, batch=spec.batch, seed=spec.seed,
                            process_index=getattr(model, "process_index", 0),
                            process_count=getattr(model, "process_count", 1), barrier=getattr(model, "barrier", None),
                            log_every_s=60.0)["tasks"][task.name]
    return {f"eval/{task.name}/strict": summary["strict"]["score"],
            f"eval/{task.name}/reference": summary["reference"]["score"]}


def _pure(tree):
    """nnx.State / mappings -> nested plain dicts of arrays (the form VLMInference and the checkpoint use)."""
    if hasattr(tree, "to_pure_dict"):
        return tree.to_pure_dict()
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _pure(v) for k, v in tree.items()}
    return tree


def _trains_on_demo_data(config, demo_dir: str) -> bool:
    """Whether this run's training data is the demo set in demo_dir (demo/setup.py points data.sources at it only
    when no sources were given): configs/demo.py run on the user's own data is not."""
    from oq2vl_jax.demo import setup as demo_setup

    paths = demo_setup.read_marker(demo_dir)
    sources = tuple(config.data.get("sources") or ())
    return paths is not None and any(hasattr(s, "get") and s.get("path") == paths["train"] for s in sources)


class TrainingEvaluators:
    """The evaluators of one training run (`config.evals`); the loop calls `due` and `run` after each step."""

    def __init__(self, specs: list[EvalSpec], *, workdir: str, model_config, default_every: int, tokenizer_dir: str,
                 demo_data_dir: str, compute_dtype: str, demo_row_length: int, image_size: int):
        self.specs, self.workdir, self.model_config = specs, workdir, model_config
        self.default_every, self.tokenizer_dir, self.demo_data_dir = default_every, tokenizer_dir, demo_data_dir
        self.compute_dtype, self.demo_row_length, self.image_size = compute_dtype, demo_row_length, image_size
        self.scores: dict[str, tuple[int, dict]] = {}  # evaluator name -> (step, its scores) of its last run

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
            default_dir = config.demo_sft.get("data_dir") or storage.join(workdir, "sft_data")
        else:
            default_dir = demo.get("data_dir") or storage.join(workdir, "demo_data")
        demo_dir = storage.resolve(default_dir)
        for s in specs:
            if s.name == ATTRIBUTES and "demo" not in config:
                raise UserError("config.evals: demo_attributes needs the demo config (configs/demo.py)")
        if any(s.name == ATTRIBUTES for s in specs) and not _trains_on_demo_data(config, demo_dir):
            from absl import logging

            logging.info("config.evals: demo_attributes skipped: it scores the synthetic demo data, which this run "
                         "does not train on (data.sources is set)")
            specs = [s for s in specs if s.name != ATTRIBUTES]
            if not specs:
                return None
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
                self.scores[ATTRIBUTES] = (step, scores)
                for condition, values in scores.items():
                    metrics.update({f"eval/{ATTRIBUTES}/{condition}/{a}": 100.0 * v for a, v in values.items()})
                continue
            if model is None:
                from oq2vl_jax.evals.checkpoint_model import InferenceModel
                from oq2vl_jax.inference import VLMInference

                model = InferenceModel(VLMInference(self.model_config, host, self.tokenizer_dir,
                                                    devices=jax.local_devices(), compute_dtype=self.compute_dtype))
            out = storage.join(self.workdir, "evals", f"step_{step}")
            metrics.update(run_benchmark(spec, model, self.demo_data_dir, out))
        logging.info("step %d evals: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in sorted(metrics.items())))
        return metrics
