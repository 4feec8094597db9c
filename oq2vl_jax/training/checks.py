"""Checks on a training config that need nothing but the config: run by the CLI before the slow imports (one
`error:` line in about a second) and again by `setup.validate_config`. Each message names the field and the fix."""

from __future__ import annotations

import math

from oq2vl_jax.errors import UserError

INIT_SOURCES = ("pretrained", "checkpoint", "random")


def check_fields(config, *, check_data: bool = True) -> None:
    """check_data=False: the data comes from elsewhere (loop.run's data_factory); data.*sources are not read."""
    t, o = config.train, config.optim
    for name, value, low in (("train.num_steps", t.num_steps, 1), ("train.log_every", t.log_every, 1),
                             ("train.eval_every", t.eval_every, 0), ("train.eval_batches", t.eval_batches, 0),
                             ("train.micro_batches", t.micro_batches, 1),
                             ("train.max_nonfinite_in_row", t.max_nonfinite_in_row, 1),
                             ("checkpoint.every_steps", config.checkpoint.every_steps, 1),
                             # keep=0 would delete every checkpoint right after writing it
                             ("checkpoint.keep", config.checkpoint.keep, 1)):
        if value is None or value < low:
            raise UserError(f"{name} must be >= {low}, got {value}; set --config.{name}=N")
    if t.global_batch_rows % t.micro_batches:
        raise UserError(f"train.global_batch_rows={t.global_batch_rows} must be a multiple of "
                        f"train.micro_batches={t.micro_batches}")
    for name in ("lr", "weight_decay", "clip_norm"):
        if not math.isfinite(float(o[name])) or float(o[name]) < 0:  # nan passes `< 0`
            raise UserError(f"optim.{name} must be a finite number >= 0, got {o[name]}; set --config.optim.{name}")
    if not 0.0 <= float(o.warmup_ratio) < 1.0:
        raise UserError(f"optim.warmup_ratio must be in [0, 1), got {o.warmup_ratio}")
    if t.eval_every and not config.data.eval_sources and not config.get("evals") and not _demo_data(config):
        raise UserError(f"train.eval_every={t.eval_every} but there is nothing to evaluate: set data.eval_sources "
                        "(held-out data for the eval loss) or config.evals, or --config.train.eval_every=0")
    from oq2vl_jax.data.config import check_source_specs  # light: the schema only
    for name in ("sources", "eval_sources") if check_data else ():
        check_source_specs(config.data[name], f"data.{name}")
    if config.init.source not in INIT_SOURCES:
        raise UserError(f"init.source must be one of {INIT_SOURCES}, got '{config.init.source}'")


def _demo_data(config) -> bool:
    """The demo configs fill data.* in later with their synthetic data, when no data.sources are given
    (data/demo_setup.py, data/demo_sft.py)."""
    demo = "demo" in config and config.demo.get("enabled", True)
    return not config.data.sources and bool(demo or "demo_sft" in config)
