"""The training loop: config -> mesh, state (fresh, imported or resumed), data, jitted steps, metrics, checkpoints.

Resume: when WORKDIR/checkpoints holds a finished step, the run continues from the newest one that restores (model
config from its meta; parameters, optimizer state, counters and this process's data iterator state restored; damaged
newer steps are moved to checkpoints/corrupt/); the init source is then ignored. Metrics records after the start step
are dropped, so every step appears once in metrics.jsonl whatever stopped the previous run.

Stopping: at train.num_steps; when the data runs out; on SIGTERM or Ctrl-C (single process: signal handlers, see
training/stop.py; multi-process: jax's preemption sync point, so every process stops at the same step) after a final
checkpoint; or, with a UserError, after train.max_nonfinite_in_row consecutive non-finite steps. The last step's
metrics record always carries the data totals.

One trainer per workdir: the run holds WORKDIR/train.lock (training/workdir.py).

Host batches are read one step ahead in a background thread; each step's metrics are fetched after the next step has
been dispatched, so the host never waits for the device between steps.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.data.stats import DataStats, add_counts
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.text import contract as contract_lib
from oq2vl_jax.training import flops as flops_lib
from oq2vl_jax.training import metrics as metrics_lib
from oq2vl_jax.training import setup
from oq2vl_jax.training.checkpoint import Checkpointer, check_own_directory
from oq2vl_jax.training import workdir as workdir_lib
from oq2vl_jax.training.host import DataFactory, Prefetcher, global_data_totals, pipeline_data_factory
from oq2vl_jax.training.optimizer import lr_schedule
from oq2vl_jax.training.state import ModelParts, TrainState, check_stage, init_state
from oq2vl_jax.training.step import make_eval_step, make_train_step
from oq2vl_jax.training.stop import SIGNAL_NAMES, StopSignal

SIGNALS = tuple(SIGNAL_NAMES.values())


@dataclasses.dataclass
class RunResult:
    workdir: str
    checkpoint_dir: str
    start_step: int
    last_step: int
    stopped_by: str  # "num_steps" | "data_exhausted" | "sigterm" | "sigint" (Ctrl-C)
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    model_config: VLMConfig
    state: TrainState
    parts: ModelParts
    mesh: jax.sharding.Mesh
    evaluator_scores: dict = dataclasses.field(default_factory=dict)  # name -> (step, scores) of its last run


def evaluate(eval_step, state: TrainState, make_iterator: DataFactory, mesh, *, rows: int, global_rows: int,
             num_batches: int, seed: int) -> float:
    """Token-weighted mean loss over the first num_batches batches of the held-out split (0 = all of it; with several
    processes num_batches must be > 0, and a process whose share runs out early feeds empty batches)."""
    iterator = make_iterator("eval", seed, jax.process_index(), jax.process_count(), rows)
    nll = weight = 0.0
    template, i = None, 0
    while not num_batches or i < num_batches:
        batch = next(iterator, None)
        if batch is None:
            if template is None or not num_batches:
                break
            batch = {k: np.zeros_like(v) for k, v in template.items()}
        batch.pop("stats", None)
        template = template or batch
        with jax.set_mesh(mesh):
            n, w = eval_step(state, parallel.host_to_global(batch, mesh, global_rows))
        nll, weight, i = nll + float(n), weight + float(w), i + 1
    return nll / max(weight, 1.0)


def run(config, workdir: str, *, devices=None, data_factory: DataFactory | None = None,
        compiler_options: Mapping[str, Any] | None = None, stop: StopSignal | None = None,
        prepare: Callable[[Any, str], None] | None = None) -> RunResult | None:
    """Trains (or resumes) in `workdir`. The one start-up of a run: checks the config and the workdir, takes the
    workdir's lock, lets `prepare(config, workdir)` write what the run reads (the CLI's demo data; it may fill in
    config.data), checks the data paths, then trains. Returns None when a signal came before `prepare` (nothing
    trained, nothing saved). `stop`: the CLI's signal handlers, installed before start-up; without one the run
    installs its own for its duration."""
    workdir = workdir_lib.check_workdir(workdir)
    devices = list(devices if devices is not None else jax.devices())
    mesh = parallel.build_mesh(config.mesh, devices)
    setup.validate_config(config, mesh, check_paths=False, check_data=data_factory is None)
    multiprocess = jax.process_count() > 1
    own_stop = stop is None
    # with several processes SIGTERM belongs to JAX's preemption notifier (installed by jax.distributed.initialize):
    # a handler installed now would replace it
    stop = stop or (StopSignal() if multiprocess else StopSignal().install())
    stop.bind(multiprocess)
    try:
        with workdir_lib.locked(workdir, enabled=jax.process_index() == 0):
            if stop.received:  # (several processes: every host gets the preemption SIGTERM)
                return None
            if jax.process_index() == 0:  # the user's files there are refused before the demo data is written
                check_own_outputs(workdir)
            if prepare is not None:
                prepare(config, workdir)
            setup.validate_paths(config, check_data=data_factory is None)
            return _run(config, workdir, devices, mesh, data_factory, compiler_options, stop)
    finally:
        if own_stop:
            stop.restore()


def restore_newest(config, checkpointer: Checkpointer, mesh) -> tuple[int | None, tuple | None]:
    """The newest step of the run that restores: (step, (model config, parts, optimizer, shardings, state, data
    state)), or (None, None) when the run has no steps yet. Damaged newer steps are moved aside."""
    options, stage = setup.model_options(config.model, mesh.devices.flat[0].platform), config.train.stage

    def restore(step: int):
        _, meta = checkpoint_io.load_meta(checkpointer.directory, step)
        vlm = setup.resumed_model_config(config, meta, f"{checkpointer.directory}/{step}")
        setup.check_resumed_data(config, meta, f"{checkpointer.directory}/{step}", checkpointer.directory)
        parts = ModelParts(vlm, options)
        tx, abstract, shardings = setup.optimizer_and_state(config, parts, mesh)
        state, data_state, _ = checkpointer.restore(abstract, stage, step,
                                                    restore_data=bool(config.checkpoint.restore_data))
        return vlm, parts, tx, shardings, state, data_state
    return checkpointer.restore_newest_intact(restore)


def check_own_outputs(workdir: str) -> None:
    """UserError when the workdir's metrics.jsonl or checkpoints/ holds something the trainer did not write (the
    user's files of those names): checked before anything is built or written there."""
    metrics_lib.own_records(workdir)
    check_own_directory(os.path.join(workdir, setup.CHECKPOINT_SUBDIR))


def _run(config, workdir: str, devices, mesh, data_factory: DataFactory | None,
         compiler_options: Mapping[str, Any] | None, stop: StopSignal) -> RunResult:
    t, stage = config.train, config.train.stage
    primary = jax.process_index() == 0
    options = setup.model_options(config.model, mesh.devices.flat[0].platform)

    checkpointer = Checkpointer(os.path.join(workdir, setup.CHECKPOINT_SUBDIR), keep=int(config.checkpoint.keep),
                                async_save=bool(config.checkpoint.async_save))
    setup.resolve_tokenizer_dir(config, checkpointer.directory, bool(checkpointer.all_steps()))

    # data_state: {"iterator": this process's iterator state, "stats": its data totals so far}
    resume_step, restored = restore_newest(config, checkpointer, mesh)
    if restored is not None:
        vlm_config, parts, tx, shardings, state, data_state = restored
        logging.info("resumed from %s/%d", checkpointer.directory, resume_step)
    else:
        vlm_config, imported = setup.resolve_model_config(config)
        parts = ModelParts(vlm_config, options)
        tx, abstract, shardings = setup.optimizer_and_state(config, parts, mesh)
        params = setup.initial_params(config, parts, mesh, abstract, imported, compiler_options)
        state = init_state(params, parts, stage, config.model.frozen_dtype, tx, mesh, compiler_options)
        del params, imported
        data_state = None
        checkpointer.write_tokenizer(config.data.tokenizer_dir, vlm_config.llm.vocab_size)
    start = int(jax.device_get(state.step))
    total = int(t.num_steps)
    if primary:  # steps after `start` run again: their records from an interrupted run go (and any partial line)
        metrics_lib.truncate_metrics(workdir, start)

    make_iterator = data_factory or pipeline_data_factory(config, vlm_config.tokens_per_image)
    row_start, row_stop = parallel.process_rows(mesh, t.global_batch_rows)
    iterator = make_iterator("train", int(config.seed), jax.process_index(), jax.process_count(),
                             row_stop - row_start)
    data_stats = DataStats()
    if data_state is not None:
        iterator.set_state(data_state["iterator"])
        add_counts(data_stats.totals, data_state["stats"])
    train_step = make_train_step(parts, tx, mesh, micro_batches=int(t.micro_batches),
                                 lr_fn=lr_schedule(float(config.optim.lr), total, float(config.optim.warmup_ratio)),
                                 state_shardings=shardings, compiler_options=compiler_options)
    eval_step = (make_eval_step(parts, mesh, shardings, compiler_options=compiler_options)
                 if t.eval_every and config.data.eval_sources else None)

    meta = checkpoint_io.make_meta(vlm_config, stage=stage, train_config=config.to_json_best_effort(),
                                   **checkpoint_io.contract_meta(
                                       contract_lib.for_data_config(config.data),
                                       tokenizer=setup.run_tokenizer_fingerprint(config, checkpointer.directory)))
    writer = metrics_lib.MetricsWriter(workdir, enabled=primary, tensorboard=bool(config.log.tensorboard))
    from oq2vl_jax.training.evaluators import TrainingEvaluators  # config.evals: benchmark / demo evaluators
    evaluators = TrainingEvaluators.from_config(
        config, workdir, vlm_config, checkpoint_io.tokenizer_path(checkpointer.directory) or config.data.tokenizer_dir)
    peak = flops_lib.peak_flops_per_device(devices[0].device_kind, float(config.hardware.peak_tflops))
    trained = check_stage(stage)
    window = metrics_lib.Window()
    iterator_state = iterator.get_state()
    prefetch = Prefetcher(iterator)
    # a finite data stream can end on one process first; then every process must stop at the same step
    sync_end = jax.process_count() > 1 and int(config.data.num_epochs) > 0
    first_loss = last_loss = eval_loss = None
    pending, stopped_by, step = None, "num_steps", start
    logging.info("training %s stage from step %d to %d on mesh %s (%s)", stage, start, total, dict(mesh.shape),
                 devices[0].device_kind)

    def finish(item, last: bool = False) -> None:
        """Metrics of one finished step (fetched one step late); the last step of a run, however it stopped, also
        gets the rates and the data totals."""
        nonlocal first_loss, last_loss
        step_no, metrics = item
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        window.add(m, flops_lib.step_flops(vlm_config, trained, m))
        record = {"step": step_no, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                  "skipped_nonfinite": int(m["skipped_nonfinite"])}
        first_loss = m["loss"] if first_loss is None else first_loss
        last_loss = m["loss"]
        now = time.perf_counter()
        first = step_no == start + 1
        logged = first or last or step_no % t.log_every == 0 or step_no == total
        if first:  # includes start-up and compilation: kept out of the rates
            record["first_step_time"] = now - window.start
        elif logged:
            record.update(window.rates(now, len(devices), peak))
        if logged and (last or not first):
            record.update({f"data/{k}": v for k, v in global_data_totals(data_stats).items() if v})
            record["nonfinite_total"] = int(m["nonfinite_total"])
        if logged:
            window.reset(now)
            writer.log(metrics_lib.progress_line(step_no, total, record))
        writer.write(record)
        if m["nonfinite_in_row"] >= t.max_nonfinite_in_row:
            raise UserError(f"stopping: {int(m['nonfinite_in_row'])} consecutive steps (up to step {step_no}) had a "
                            f"non-finite loss or gradient norm and were skipped (train.max_nonfinite_in_row="
                            f"{t.max_nonfinite_in_row}); the last checkpoint is in {checkpointer.directory}. Lower "
                            "--config.optim.lr or check the data")

    try:
        if stop.received and not stop.multiprocess:  # a signal during start-up: stop before the first step
            stopped_by = stop.received
        while step < total and stopped_by == "num_steps":
            item = prefetch.next()
            if sync_end and np.asarray(multihost_utils.process_allgather(np.int32(item is None))).any():
                item = None
            if item is None:
                stopped_by = "data_exhausted"
                logging.warning("the training data ran out after %d steps (train.num_steps=%d)", step, total)
                break
            batch, iterator_state = item
            data_stats.update(batch.pop("stats"))
            global_batch = parallel.host_to_global(batch, mesh, t.global_batch_rows)
            with jax.set_mesh(mesh):
                state, metrics = train_step(state, global_batch)
            step += 1
            if pending is not None:
                finish(pending)
            pending = (step, metrics)
            if eval_step is not None and step % t.eval_every == 0:
                finish(pending)
                pending = None
                eval_loss = evaluate(eval_step, state, make_iterator, mesh, rows=row_stop - row_start,
                                     global_rows=t.global_batch_rows, num_batches=int(t.eval_batches),
                                     seed=int(config.seed))
                writer.write({"step": step, "eval_loss": eval_loss})
                writer.log(f"step {step}: eval loss {eval_loss:.4f}")
            if evaluators is not None and evaluators.due(step, total):
                if pending is not None:
                    finish(pending)
                    pending = None
                writer.write({"step": step, **evaluators.run(step, dict(state.trainable) | dict(state.frozen), total,
                                                             apply=lambda p, b: parts.model(p)(b))})
            if stop.should_stop(step):
                stopped_by = stop.received or "sigterm"  # several processes: JAX's preemption notice (SIGTERM)
                break
            if step % config.checkpoint.every_steps == 0 and step < total:
                checkpointer.save(state, {"iterator": iterator_state, "stats": data_stats.totals}, meta)
        if pending is not None:
            finish(pending, last=True)
        if step > start or (checkpointer.latest_step() != step and stopped_by == "num_steps"):
            checkpointer.save(state, {"iterator": iterator_state, "stats": data_stats.totals}, meta)
        checkpointer.wait()
    finally:
        checkpointer.close()
        writer.close()
    if stopped_by in SIGNALS:
        writer.log(f"stopped by {stopped_by.upper()} at step {step}; "
                   + ("checkpoint saved" if step > start else "nothing trained in this run, nothing saved"))
    data_stats.log_summary()
    return RunResult(workdir=workdir, checkpoint_dir=checkpointer.directory, start_step=start, last_step=step,
                     stopped_by=stopped_by, first_loss=first_loss, last_loss=last_loss, eval_loss=eval_loss,
                     model_config=vlm_config, state=state, parts=parts, mesh=mesh,
                     evaluator_scores=dict(evaluators.scores) if evaluators is not None else {})
