"""The training loop: config -> mesh, state (fresh, imported or resumed), data, jitted steps, metrics, checkpoints.

Resume: when WORKDIR/checkpoints holds a finished step, the run continues from the latest one (model config from its
meta; parameters, optimizer state, counters and this process's data iterator state restored); the init source is
then ignored. Metrics records after that step are dropped, so every step appears once in metrics.jsonl.

Stopping: at train.num_steps; when the data runs out; on SIGTERM (single process: a signal handler; multi-process:
jax's preemption sync point, so every process stops at the same step) after a final checkpoint; or, with a UserError,
after train.max_nonfinite_in_row consecutive non-finite steps.

Host batches are read one step ahead in a background thread; each step's metrics are fetched after the next step has
been dispatched, so the host never waits for the device between steps.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from oq2vl_jax import checkpoint_io, parallel
from oq2vl_jax.data.stats import SKIP_REASONS, DataStats, add_counts
from oq2vl_jax.errors import UserError
from oq2vl_jax.models.presets import ModelOptions, VLMConfig, llm_preset, vision_preset
from oq2vl_jax.training import flops as flops_lib
from oq2vl_jax.training import metrics as metrics_lib
from oq2vl_jax.training.checkpoint import Checkpointer
from oq2vl_jax.training.optimizer import lr_schedule, make_optimizer
from oq2vl_jax.training.state import (ModelParts, TrainState, abstract_state, check_stage, init_state, merge_params,
                                      split_params)
from oq2vl_jax.training.step import make_eval_step, make_train_step

CHECKPOINT_SUBDIR = "checkpoints"
INIT_SOURCES = ("pretrained", "checkpoint", "random")
VOCAB_MULTIPLE = 128  # random-init vocabularies are rounded up so the table shards evenly

# make_iterator(split, seed, process_index, process_count, rows) -> iterator with next / get_state / set_state
DataFactory = Callable[[str, int, int, int, int], Any]


@dataclasses.dataclass
class RunResult:
    workdir: str
    checkpoint_dir: str
    start_step: int
    last_step: int
    stopped_by: str  # "num_steps" | "sigterm" | "data_exhausted"
    first_loss: float | None
    last_loss: float | None
    eval_loss: float | None
    model_config: VLMConfig
    state: TrainState
    parts: ModelParts
    mesh: jax.sharding.Mesh


def model_options(model_cfg: Mapping) -> ModelOptions:
    return ModelOptions(compute_dtype=model_cfg["compute_dtype"], attention=model_cfg["attention"],
                        remat=model_cfg["remat"], vision_chunk=int(model_cfg["vision_chunk"]),
                        loss_chunk=int(model_cfg["loss_chunk"]), reference_compat=bool(model_cfg["reference_compat"]))


def random_model_config(config) -> VLMConfig:
    """The architecture for random init: presets, with the vocabulary sized to the tokenizer unless given."""
    from oq2vl_jax.data.pipeline import model_vocab_size

    vocab = int(config.model.vocab_size) or -(-model_vocab_size(config.data) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    return preset_model_config(config, vocab)


def preset_model_config(config, vocab_size: int = 0) -> VLMConfig:
    """Presets + model.*_overrides; the vision image size is data.image_size."""
    m = config.model
    llm = dataclasses.replace(llm_preset(m.llm), **dict(m.llm_overrides))
    if vocab_size:
        llm = dataclasses.replace(llm, vocab_size=vocab_size)
    vision = dataclasses.replace(vision_preset(m.vision), **dict(m.vision_overrides),
                                 image_size=int(config.data.image_size))
    return VLMConfig(vision=vision, llm=llm, tokens_per_image=int(m.tokens_per_image))


def optimizer_and_state(config, parts: ModelParts, mesh) -> tuple:
    """(optimizer, abstract TrainState, its shardings) for config.train.stage: the one definition used by training,
    --dry_run and the step benchmark (weight decay masked over the trained towers only)."""
    stage = config.train.stage
    trainable, _ = split_params(parts.abstract_params, stage)
    tx = make_optimizer(config.optim, int(config.train.num_steps), parts.decay_mask(trainable))
    abstract, shardings = abstract_state(parts, stage, config.model.frozen_dtype, tx, mesh)
    return tx, abstract, shardings


def validate_config(config, mesh, *, check_paths: bool = True, check_data: bool = True) -> None:
    """Checks that can fail before anything heavy happens; each message names the field to set."""
    check_stage(config.train.stage)
    t = config.train
    if t.num_steps < 1:
        raise UserError(f"train.num_steps must be >= 1, got {t.num_steps}")
    if t.micro_batches < 1 or t.global_batch_rows % t.micro_batches:
        raise UserError(f"train.global_batch_rows={t.global_batch_rows} must be a multiple of "
                        f"train.micro_batches={t.micro_batches} (>= 1)")
    shards = parallel.batch_shards(mesh)
    micro_rows = t.global_batch_rows // t.micro_batches
    if micro_rows % shards:
        raise UserError(f"a micro-batch has {micro_rows} rows (train.global_batch_rows / train.micro_batches), which "
                        f"does not divide over the {shards} batch shards (mesh data x fsdp = {dict(mesh.shape)}); "
                        "change --config.train.global_batch_rows, --config.train.micro_batches or --config.mesh.*")
    source = config.init.source
    if source not in INIT_SOURCES:
        raise UserError(f"init.source must be one of {INIT_SOURCES}, got '{source}'")
    if jax.process_count() > 1 and t.eval_every and not t.eval_batches:
        raise UserError("with several processes set --config.train.eval_batches > 0 (every process must run the same "
                        "number of eval steps)")
    if bool(config.model.reference_compat) != (config.data.label_mode == "reference_compat"):
        logging.warning("model.reference_compat=%s but data.label_mode=%s: reproducing the reference needs both",
                        config.model.reference_compat, config.data.label_mode)
    if check_paths:
        validate_paths(config, check_data)


def validate_paths(config, check_data: bool = True) -> None:
    from oq2vl_jax.data.sources import source_path_exists
    if check_data and not config.data.sources:
        raise UserError("data.sources is empty; set e.g. --config.data.sources='({\"kind\": \"webdataset\", "
                        "\"path\": \"/data/shards\"},)' (see oq2vl_jax/data/pipeline.py for the kinds)")
    source = config.init.source
    paths = {"pretrained": ("llm_dir", "vision_src"), "checkpoint": ("init_from",), "random": ()}[source]
    for name in paths:
        value = config.init[name]
        if not value or not os.path.exists(value):
            raise UserError(f"init.{name}: {value!r} does not exist; set --config.init.{name}=PATH "
                            f"(init.source='{source}')")
    for i, spec in enumerate(config.data.sources if check_data else ()):
        path = spec.get("path", "")
        if path and not source_path_exists(spec):  # a webdataset path may be a glob, a brace range or a list
            raise UserError(f"data.sources[{i}].path: {path!r} does not exist")
    if config.data.tokenizer_dir and not os.path.isdir(config.data.tokenizer_dir):
        raise UserError(f"data.tokenizer_dir: {config.data.tokenizer_dir!r} is not a directory; set "
                        "--config.data.tokenizer_dir=PATH")


def resolve_tokenizer_dir(config, checkpoint_dir: str, resuming: bool) -> None:
    """An empty data.tokenizer_dir means the tokenizer that came with the weights: the resumed checkpoint's, the
    init_from checkpoint's, or the HF LLM directory's."""
    if config.data.tokenizer_dir:
        return
    if resuming:
        found = checkpoint_io.tokenizer_path(checkpoint_dir)
    elif config.init.source == "checkpoint":
        found = checkpoint_io.tokenizer_path(config.init.init_from)
    elif config.init.source == "pretrained":
        found = config.init.llm_dir
    else:
        found = None
    if found:
        config.data.tokenizer_dir = found


def pipeline_data_factory(config, tokens_per_image: int) -> DataFactory:
    from oq2vl_jax.data.pipeline import build_iterator

    def make(split, seed, process_index, process_count, rows):
        return build_iterator(config.data, tokens_per_image=tokens_per_image, rows_per_batch=rows, seed=seed,
                              process_index=process_index, process_count=process_count, split=split)
    return make


class _Prefetcher:
    """next(iterator) and its state right after, one batch ahead, in a daemon thread."""

    _END = object()

    def __init__(self, iterator, depth: int = 2):
        self.iterator, self.queue = iterator, queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while True:
                batch = next(self.iterator)
                self.queue.put((batch, self.iterator.get_state()))
        except StopIteration:
            self.queue.put(self._END)
        except BaseException as e:  # surfaced in the main thread
            self.queue.put(e)

    def next(self):
        item = self.queue.get()
        if item is self._END:
            return None
        if isinstance(item, BaseException):
            raise item
        return item


class _StopSignal:
    """SIGTERM -> stop after the current step with a checkpoint."""

    def __init__(self):
        self.received = False
        self.multiprocess = jax.process_count() > 1
        self._previous = None
        if not self.multiprocess and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = True
        logging.warning("SIGTERM: stopping after this step with a checkpoint")

    def should_stop(self, step: int) -> bool:
        if self.multiprocess:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _global_data_totals(stats: DataStats) -> dict[str, int]:
    keys = list(stats.totals)
    local = np.asarray([stats.totals[k] for k in keys], np.int64)
    if jax.process_count() > 1:
        local = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, len(keys)).sum(axis=0)
    totals = dict(zip(keys, (int(v) for v in local)))
    totals["skipped"] = sum(totals[r] for r in SKIP_REASONS)
    return totals


def _initial_params(config, parts: ModelParts, mesh, abstract: TrainState, imported: dict | None,
                    compiler_options) -> dict:
    source = config.init.source
    if source == "random":
        return parts.random_params(int(config.seed), mesh, compiler_options)
    if source == "pretrained":
        return imported
    target = merge_params(abstract.trainable, abstract.frozen)
    _, params, _ = checkpoint_io.load_params(config.init.init_from, abstract_params=target)
    return params


def _model_config(config, checkpointer: Checkpointer) -> tuple[VLMConfig, dict | None]:
    """(architecture, imported numpy params for init.source=pretrained when not resuming)."""
    if checkpointer.latest_step() is not None:
        _, meta = checkpoint_io.load_meta(checkpointer.directory)
        return VLMConfig.from_dict(meta["model_config"]), None
    source = config.init.source
    if source == "random":
        return random_model_config(config), None
    if source == "checkpoint":
        _, meta = checkpoint_io.load_meta(config.init.init_from)
        return VLMConfig.from_dict(meta["model_config"]), None
    from oq2vl_jax.convert.importer import import_pretrained
    return import_pretrained(config.init.llm_dir, config.init.vision_src,
                             tokens_per_image=int(config.model.tokens_per_image),
                             projector_seed=int(config.init.projector_seed))


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
        compiler_options: Mapping[str, Any] | None = None) -> RunResult:
    workdir = os.path.abspath(workdir)
    devices = list(devices if devices is not None else jax.devices())
    mesh = parallel.build_mesh(config.mesh, devices)
    validate_config(config, mesh, check_data=data_factory is None)
    t, stage = config.train, config.train.stage
    primary = jax.process_index() == 0

    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINT_SUBDIR), keep=int(config.checkpoint.keep),
                                async_save=bool(config.checkpoint.async_save))
    resume_step = checkpointer.latest_step()
    resolve_tokenizer_dir(config, checkpointer.directory, resume_step is not None)
    vlm_config, imported = _model_config(config, checkpointer)
    parts = ModelParts(vlm_config, model_options(config.model))
    total = int(t.num_steps)
    tx, abstract, shardings = optimizer_and_state(config, parts, mesh)

    data_state = None  # {"iterator": this process's iterator state, "stats": its data totals so far}
    if resume_step is not None:
        state, data_state, _ = checkpointer.restore(abstract, stage, resume_step,
                                                    restore_data=bool(config.checkpoint.restore_data))
        logging.info("resumed from %s/%d", checkpointer.directory, resume_step)
        if primary:
            metrics_lib.truncate_metrics(workdir, resume_step)
    else:
        params = _initial_params(config, parts, mesh, abstract, imported, compiler_options)
        state = init_state(params, parts, stage, config.model.frozen_dtype, tx, mesh, compiler_options)
        del params
        del imported
        checkpointer.write_tokenizer(config.data.tokenizer_dir, vlm_config.llm.vocab_size)
    start = int(jax.device_get(state.step))

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

    meta = checkpoint_io.make_meta(vlm_config, stage=stage, train_config=config.to_json_best_effort())
    writer = metrics_lib.MetricsWriter(workdir, enabled=primary, tensorboard=bool(config.log.tensorboard))
    peak = flops_lib.peak_flops_per_device(devices[0].device_kind, float(config.hardware.peak_tflops))
    trained = check_stage(stage)
    window, stop = metrics_lib.Window(), _StopSignal()
    iterator_state = iterator.get_state()
    prefetch = _Prefetcher(iterator)
    # a finite data stream can end on one process first; then every process must stop at the same step
    sync_end = jax.process_count() > 1 and int(config.data.num_epochs) > 0
    first_loss = last_loss = eval_loss = None
    pending, stopped_by, step = None, "num_steps", start
    logging.info("training %s stage from step %d to %d on mesh %s (%s)", stage, start, total, dict(mesh.shape),
                 devices[0].device_kind)

    def finish(item) -> None:
        """Metrics of one finished step (fetched one step late)."""
        nonlocal first_loss, last_loss
        step_no, metrics = item
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        window.add(m, flops_lib.step_flops(vlm_config, trained, m))
        record = {"step": step_no, "loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
                  "skipped_nonfinite": int(m["skipped_nonfinite"])}
        first_loss = m["loss"] if first_loss is None else first_loss
        last_loss = m["loss"]
        now = time.perf_counter()
        if step_no == start + 1:  # includes start-up and compilation: kept out of the rates
            record["first_step_time"] = now - window.start
            window.reset(now)
            writer.log(metrics_lib.progress_line(step_no, total, record))
        elif step_no % t.log_every == 0 or step_no == total:
            record.update(window.rates(now, len(devices), peak))
            record.update({f"data/{k}": v for k, v in _global_data_totals(data_stats).items() if v})
            record["nonfinite_total"] = int(m["nonfinite_total"])
            window.reset(now)
            writer.log(metrics_lib.progress_line(step_no, total, record))
        writer.write(record)
        if m["nonfinite_in_row"] >= t.max_nonfinite_in_row:
            raise UserError(f"stopping: {int(m['nonfinite_in_row'])} consecutive steps (up to step {step_no}) had a "
                            f"non-finite loss or gradient norm and were skipped (train.max_nonfinite_in_row="
                            f"{t.max_nonfinite_in_row}); the last checkpoint is in {checkpointer.directory}. Lower "
                            "--config.optim.lr or check the data")

    try:
        while step < total:
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
            if stop.should_stop(step):
                stopped_by = "sigterm"
                break
            if step % config.checkpoint.every_steps == 0 and step < total:
                checkpointer.save(state, {"iterator": iterator_state, "stats": data_stats.totals}, meta)
        if pending is not None:
            finish(pending)
        if step > start or checkpointer.latest_step() != step:
            checkpointer.save(state, {"iterator": iterator_state, "stats": data_stats.totals}, meta)
        checkpointer.wait()
    finally:
        stop.restore()
        checkpointer.close()
        writer.close()
    if stopped_by == "sigterm":
        writer.log(f"stopped by SIGTERM at step {step}; checkpoint saved")
    data_stats.log_summary()
    return RunResult(workdir=workdir, checkpoint_dir=checkpointer.directory, start_step=start, last_step=step,
                     stopped_by=stopped_by, first_loss=first_loss, last_loss=last_loss, eval_loss=eval_loss,
                     model_config=vlm_config, state=state, parts=parts, mesh=mesh)
