"""Training checkpoints in the shared layout of `oq2vl_jax/checkpoint_io.py`, plus the trainer's own items.

  WORKDIR/checkpoints/<step>/params     full parameter tree (trained towers fp32, frozen towers in frozen_dtype); what
                                        `checkpoint_io.load_params`, the exporter and `init_from` read
  WORKDIR/checkpoints/<step>/meta       JSON: format, version, model_config, stage, the training config
  WORKDIR/checkpoints/<step>/opt_state  optimizer state (sharded like the trained parameters)
  WORKDIR/checkpoints/<step>/train      JSON: step, non-finite counters, process count
  WORKDIR/checkpoints/<step>/data       process_<i>-of-<n>.json: each process's data state (the loop stores its
                                        iterator state and data totals there)
  WORKDIR/checkpoints/tokenizer/        the tokenizer

Saves are asynchronous (Orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete, so a save
interrupted mid-write is never listed as a step; its directory is removed at the next start).

Parameters and optimizer state restore onto any mesh: the restore target is a tree of ShapeDtypeStructs carrying the
new shardings. They are written without Orbax's replica-parallel mode, which slices every replicated shard with eager
ops (a one-off compile per shape: ~10 s per mesh on CPU) to share the writing between replicas; under FSDP little is
replicated. The files are the same format, so `checkpoint_io` (StandardRestore) reads them.

The data iterator state is per process, so it restores only with the same process count; otherwise the restore fails
with a message, unless `checkpoint.restore_data=False`, which restarts the data stream from its start.

A step that does not restore (a file truncated or missing, JSON that does not parse: a disk filled up, a copy cut
short, a hand edit) is moved to WORKDIR/checkpoints/corrupt/<step> with a warning naming it and the error, and the run
resumes from the newest step that does restore (`restore_newest_intact`). When none does, the run stops with one
line and moves nothing.

WORKDIR may be a bucket (gs://, s3://): Orbax writes there itself (storage/orbax_s3.py); a step is published by its
commit_success.txt object instead of a rename, and a step moved aside is copied object by object, then removed.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from oq2vl_jax import checkpoint_io, own_files
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import orbax_s3, paths as storage
from oq2vl_jax.text import tokens
from oq2vl_jax.training.state import TrainState, merge_params, split_params

ITEMS = ("params", "meta", "opt_state", "train", "data")
CORRUPT_SUBDIR = "corrupt"  # damaged steps are moved here, never deleted
T = TypeVar("T")


def _array_registry():
    return ocp.type_handlers.create_type_handler_registry(
        (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False)),
        (np.ndarray, ocp.type_handlers.NumpyHandler()),
        (int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()))


def data_filename(process_index: int, process_count: int) -> str:
    return f"process_{process_index}-of-{process_count}.json"


# what the trainer (and Orbax for it) creates in WORKDIR/checkpoints: steps, a step being written, the tokenizer,
# damaged steps moved aside. Orbax deletes `*.orbax-checkpoint-tmp*` entries at start, so nothing else may be there.
_OWN_ENTRY = re.compile(r"\d+|\d+\.orbax-checkpoint-tmp(-\d+)?|" + re.escape(checkpoint_io.TOKENIZER_DIR) + "|"
                        + re.escape(CORRUPT_SUBDIR))


def check_own_directory(directory: str) -> None:
    """UserError naming an entry of the checkpoint directory that the trainer did not create (the user's files would
    be deleted or mistaken for steps); nothing is changed."""
    own_files.check_own_entries(
        directory, lambda name: _OWN_ENTRY.fullmatch(name) is not None, what="the trainer",
        hint=f"{directory} must hold only the run's checkpoints (steps, {checkpoint_io.TOKENIZER_DIR}/, "
             f"{CORRUPT_SUBDIR}/): move it away or choose another --workdir")


class Checkpointer:
    def __init__(self, directory: str, *, keep: int | None = 3, async_save: bool = True):
        self.directory = storage.resolve(directory)
        check_own_directory(self.directory)  # (a local directory; nothing to check in a bucket)
        checkpoint_io.quiet_out_of_space_records()
        every_process = ocp.options.MultiprocessingOptions(primary_host=None)
        registry = _array_registry()
        handlers = {
            "params": ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
            "meta": ocp.JsonCheckpointHandler(),
            "opt_state": ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
            "train": ocp.JsonCheckpointHandler(),
            # every process writes (and reads) its own file
            "data": ocp.JsonCheckpointHandler(filename=data_filename(jax.process_index(), jax.process_count()),
                                              multiprocessing_options=every_process),
        }
        options = orbax_s3.checkpoint_manager_options(
            self.directory, max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, item_handlers=handlers,
                                             options=options)
        # Orbax removes unfinished saves in a background thread: wait for it, so that a run stopping right away (a
        # bad init_from) does not leave it running into interpreter shutdown (a traceback after the error line)
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, data_state: Mapping[str, Any], meta: Mapping[str, Any],
             train_info: Mapping[str, Any] | None = None) -> int:
        """Starts an (async) save of `state` at its step; returns the step. The JSON items are snapshotted now (the
        async writer serialises them later, when the caller may have changed them)."""
        step = int(jax.device_get(state.step))
        train = {"step": step, "nonfinite_in_row": int(jax.device_get(state.nonfinite_in_row)),
                 "nonfinite_total": int(jax.device_get(state.nonfinite_total)),
                 "process_count": jax.process_count(), **(train_info or {})}
        args = ocp.args.Composite(
            params=ocp.args.PyTreeSave(merge_params(state.trainable, state.frozen)),
            meta=ocp.args.JsonSave(_snapshot(meta)),
            opt_state=ocp.args.PyTreeSave(state.opt_state),
            train=ocp.args.JsonSave(_snapshot(train)),
            data=ocp.args.JsonSave(_snapshot(data_state)))
        with self._reporting_a_full_disk():
            self.manager.save(step, args=args, force=True)
        return step

    @contextlib.contextmanager
    def _reporting_a_full_disk(self):
        """A save that a full disk failed (reported by Orbax when the next save or the final wait collects it) is one
        line naming the directory and the step a rerun resumes from; the steps already written are intact."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            if not checkpoint_io.is_out_of_space(e):
                raise
            checkpoint_io.quiet_aborted_restore()
            steps = self.all_steps()
            resume = f"it resumes from step {max(steps)}" if steps else "no step was saved yet, it starts again"
            raise UserError(f"no space left on the device of '{self.directory}' while writing a checkpoint: free "
                            f"space there (or use another --workdir) and run the same command again; {resume}") from e

    def restore(self, abstract: TrainState, stage: str, step: int | None = None, *,
                restore_data: bool = True) -> tuple[TrainState, dict | None, dict]:
        """(state on the shardings of `abstract`, this process's data state or None, train info)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no finished checkpoint in {self.directory}")
        info = self.manager.restore(step, args=ocp.args.Composite(train=ocp.args.JsonRestore()))["train"]
        data_state = None
        if restore_data:
            saved, now = int(info["process_count"]), jax.process_count()
            if saved != now:
                raise UserError(
                    f"checkpoint {self.directory}/{step} was written by {saved} processes and this run has {now}: the "
                    "data iterator state is per process and cannot follow. Run with the same process count, or set "
                    "--config.checkpoint.restore_data=False to keep the model and optimizer state and restart the "
                    "data stream from its beginning")
            data_state = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]
        abstract_params = merge_params(abstract.trainable, abstract.frozen)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=_restore_args(abstract_params), opt_state=_restore_args(abstract.opt_state)))
        trainable, frozen = split_params(restored["params"], stage)
        scalar = lambda v, like: jax.device_put(np.asarray(v, np.int32), like.sharding)  # noqa: E731
        state = TrainState(step=scalar(info["step"], abstract.step), trainable=trainable, frozen=frozen,
                           opt_state=restored["opt_state"],
                           nonfinite_in_row=scalar(info["nonfinite_in_row"], abstract.nonfinite_in_row),
                           nonfinite_total=scalar(info["nonfinite_total"], abstract.nonfinite_total))
        return state, data_state, info

    def restore_newest_intact(self, restore: Callable[[int], T]) -> tuple[int | None, T | None]:
        """`restore(step)` on the newest step on which it succeeds: (step, its result), or (None, None) when there are
        no steps. Newer steps on which it fails are moved to CORRUPT_SUBDIR/<step> with a warning. A UserError from
        `restore` (a config that does not fit the run) propagates: that is no damage. UserError when every step
        fails; nothing is moved then."""
        failures: list[tuple[int, str]] = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                result, error = restore(step), None
            except checkpoint_io.DamagedCheckpoint as e:
                result, error = None, str(e)
            except UserError:
                raise
            except Exception as e:  # orbax / tensorstore / json / missing files: the step is damaged
                result, error = None, " ".join(f"{type(e).__name__}: {e}".split())[:300]
                checkpoint_io.quiet_aborted_restore()
            if _all_processes_ok(error is None):
                for bad, reason in failures:
                    self._move_aside(bad, reason)
                if failures:
                    self.manager.reload()
                return step, result
            failures.append((step, error or "failed on another process"))
            logging.warning("checkpoint %s/%d does not restore (%s); trying the previous step", self.directory, step,
                            failures[-1][1])
        if failures:
            listed = "; ".join(f"step {s}: {r[:120]}" for s, r in failures)
            raise UserError(f"no checkpoint in {self.directory} restores ({listed}); move the step directories away "
                            "to start from scratch (or restore them from a copy)")
        return None, None

    def _move_aside(self, step: int, reason: str) -> None:
        if jax.process_index() == 0:
            aside = storage.join(self.directory, CORRUPT_SUBDIR)
            storage.makedirs(aside)
            dst, n = storage.join(aside, str(step)), 1
            while storage.exists(dst):
                dst, n = storage.join(aside, f"{step}.{n}"), n + 1
            storage.move_tree(storage.join(self.directory, str(step)), dst)
            logging.warning("checkpoint step %d is damaged (%s): moved to %s; resuming from an earlier step", step,
                            reason, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("damaged checkpoint moved aside")

    def write_tokenizer(self, tokenizer_dir: str, vocab_size: int) -> None:
        """Stores the tokenizer (with the reference's added tokens, tokenizer files only) beside the steps."""
        dst = storage.join(self.directory, checkpoint_io.TOKENIZER_DIR)
        if jax.process_index() == 0 and tokenizer_dir and storage.resolve(tokenizer_dir) != dst:
            checkpoint_io.write_tokenizer_dir(dst, lambda out: tokens.prepare(tokenizer_dir, out,
                                                                               vocab_size=vocab_size))

    def wait(self) -> None:
        with self._reporting_a_full_disk():
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._reporting_a_full_disk():
            self.manager.wait_until_finished()
        self.manager.close()


def _all_processes_ok(ok: bool) -> bool:
    """Every process restores its own files (its data state, its shards): all must succeed for a step to be used."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).all())


def _snapshot(item: Mapping[str, Any]) -> dict:
    return json.loads(json.dumps(item))


def _restore_args(abstract) -> ocp.args.PyTreeRestore:
    """Restore onto the shapes, dtypes and shardings of a tree of ShapeDtypeStructs."""
    return ocp.args.PyTreeRestore(item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract))
