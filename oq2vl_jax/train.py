"""`python -m oq2vl_jax.train --config configs/demo.py --workdir runs/demo`: train (or resume) a VLM.

Prints progress lines, the final loss and where the checkpoint landed. With the demo config it first writes the
synthetic demo data (once, into --workdir or demo.data_dir) and at the end scores how well the model names the
colour, shape and position of held-out images (oq2vl_jax/evals/demo_attributes.py).

`--dry_run` builds the abstract train state and its shardings on a simulated device count and prints per-device
memory estimates (oq2vl_jax/training/dry_run.py).
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from oq2vl_jax import parallel
from oq2vl_jax.data import demo_setup
from oq2vl_jax.errors import UserError

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags() -> dict:
    """Flags exist only when the trainer is the program (importing this module defines none)."""
    return {
        "config": config_flags.DEFINE_config_file("config", os.path.join(_REPO, "configs", "demo.py"),
                                                  "Training config file (configs/*.py)."),
        "workdir": flags.DEFINE_string("workdir", "runs/demo", "Run directory: checkpoints, metrics, demo data."),
        "dry_run": flags.DEFINE_bool("dry_run", False,
                                     "Build the abstract state and shardings only; print memory estimates."),
        "dry_run_devices": flags.DEFINE_integer("dry_run_devices", 0,
                                                "Simulated device count for --dry_run (0 = hardware.num_devices)."),
    }


class _QuietLibraries(std_logging.Filter):
    """Keeps our INFO lines and every library's warnings; drops library INFO chatter (orbax logs each save)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or f"{os.sep}oq2vl_jax{os.sep}" in record.pathname


def _score_demo(config, result, paths: dict, workdir: str) -> None:
    from oq2vl_jax.evals import demo_attributes

    params = jax.device_get(dict(result.state.trainable) | dict(result.state.frozen))
    scores = demo_attributes.attribute_scores(
        lambda p, batch: result.parts.model(p)(batch), params, paths, config.data.tokenizer_dir,
        tokens_per_image=result.model_config.tokens_per_image, row_length=config.demo.eval_row_length,
        image_size=config.data.image_size)
    for line in demo_attributes.score_lines(scores):
        print(line)
    with open(os.path.join(workdir, "attribute_scores.json"), "w") as f:
        json.dump(scores, f, indent=2)


def main(argv, flag_values: dict) -> None:
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    config, workdir = flag_values["config"].value, os.path.abspath(flag_values["workdir"].value)
    try:
        if flag_values["dry_run"].value:
            from oq2vl_jax.training.dry_run import dry_run
            print(dry_run(config, flag_values["dry_run_devices"].value))
            return
        parallel.initialize_distributed(config.distributed)
        from oq2vl_jax.training import loop
        paths = demo_setup.prepare_demo_data(config, workdir)  # None unless the demo data is used
        result = loop.run(config, workdir)
        if jax.process_index() != 0:
            return
        print(f"steps {result.start_step} -> {result.last_step} ({result.stopped_by}); first loss "
              f"{_fmt(result.first_loss)}, final loss {_fmt(result.last_loss)}"
              + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else ""))
        print(f"checkpoint: {result.checkpoint_dir}/{result.last_step}")
        scorable = jax.process_count() == 1 and result.stopped_by != "sigterm"  # the demo runs on one host
        if paths is not None and config.demo.score_attributes and scorable:
            _score_demo(config, result, paths, workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


if __name__ == "__main__":
    _flags = define_flags()
    app.run(lambda argv: main(argv, _flags))
