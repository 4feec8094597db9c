"""The on-disk layout of oq2vl_jax checkpoints, shared by the converter (params only, step 0) and the trainer.

  CKPT/                      an Orbax CheckpointManager directory
    <step>/params            parameter tree (StandardSave; sharded arrays restore onto any mesh)
    <step>/meta              JSON: {"format": "oq2vl_jax", "version": 1, "model_config": VLMConfig.to_dict(),
                             "data_contract": {...}, ...}; data_contract: how the model was taught to read its
                             input (text/contract.py: chat format, label mode, image separator)
    <step>/vision_extra      optional: vision tower parts the model does not run (later blocks, final norm, MAP
                             head), kept by `convert import` so exports can write complete towers
    <step>/<other items>     trainer-only items (optimizer state, data iterator state, rng)
    tokenizer/               HF tokenizer directory, with the reference's added tokens

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint interrupted
mid-write is never listed as a step. CKPT may be a bucket (gs://, s3://): there Orbax publishes a step with its
commit_success.txt object instead (storage/orbax_s3.py), and the tokenizer is read through a local copy
(storage/local_copy.py).
"""

from __future__ import annotations

import errno
import json
import logging as std_logging
import os
import shutil
import sys
import tempfile
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, orbax_s3, paths as storage
from oq2vl_jax.models.presets import VLMConfig
from oq2vl_jax.text import contract as contract_lib

FORMAT = "oq2vl_jax"
VERSION = 1
TOKENIZER_DIR = "tokenizer"
VISION_EXTRA = "vision_extra"


def manager(directory: str, *, max_to_keep: int | None = None, async_save: bool = True,
            item_names: tuple[str, ...] = ("params", "meta")) -> ocp.CheckpointManager:
    directory = storage.resolve(directory)
    options = orbax_s3.checkpoint_manager_options(directory, max_to_keep=max_to_keep,
                                                  enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(directory, options=options, item_names=item_names)


def make_meta(config: VLMConfig, **extra: Any) -> dict:
    return {"format": FORMAT, "version": VERSION, "model_config": config.to_dict(), **extra}


# The data contract of a step: what its input looked like beyond the architecture (model_config has the image size
# and tokens per image). One record in the step's meta: the prompt contract (text/contract.py) that every way of
# asking the model follows; further facts about the training data (e.g. the tokenizer's identity, checked when a run
# resumes) belong in the same record.
DATA_CONTRACT = "data_contract"


def contract_meta(contract: contract_lib.PromptContract, **more: Any) -> dict:
    """The meta entry recording `contract` (pass it to make_meta / save_params as keyword arguments)."""
    return {DATA_CONTRACT: {**contract.to_dict(), **more}}


def prompt_contract(meta: dict) -> tuple[contract_lib.PromptContract, str | None]:
    """(the step's prompt contract, a warning when it is not recorded and was inferred).

    Steps saved before the record: a trained step's saved training config names its chat format and label mode
    (exact, no warning); an imported step (meta "source", no training config) gets the original's contract; any
    other the data pipeline's default contract; both with a warning (docs/inference.md)."""
    record = meta.get(DATA_CONTRACT)
    if isinstance(record, dict):
        return contract_lib.PromptContract.from_dict(record), None
    try:
        data = json.loads(meta.get("train_config") or "{}").get("data", {})
    except (TypeError, ValueError, AttributeError):
        data = {}
    if data.get("chat_format") and data.get("label_mode"):
        return contract_lib.PromptContract.from_dict(data), None
    if "source" in meta and "train_config" not in meta:
        chosen, why = contract_lib.ORIGINAL, "an imported checkpoint: assuming the original's"
    else:
        chosen, why = contract_lib.TRAINED_DEFAULT, "assuming the data pipeline's default"
    return chosen, (f"the checkpoint does not record its prompt contract ({why}: {chosen.describe()}); if it was "
                    "taught otherwise, say so with --chat-format / --label-mode")


def check_resumed_data(meta: dict, given: contract_lib.PromptContract, given_tokenizer: str | None, where: str,
                       saved_tokenizer: str | None = None) -> None:
    """A resume is given the data the step in `where` was trained on: UserError naming the first setting that
    differs (the chat format or label mode of its recorded or saved-config contract; the tokenizer vocabulary, by
    fingerprint: the record's, else `saved_tokenizer`, the fingerprint of the copy the checkpoint carries)."""
    contract, assumed = prompt_contract(meta)
    for key in ("chat_format", "label_mode") if assumed is None else ():
        if getattr(given, key) != getattr(contract, key):
            raise UserError(f"data.{key}={getattr(given, key)!r} but the run in {where} was trained with "
                            f"{getattr(contract, key)!r}; resume with --config.data.{key}={getattr(contract, key)}, "
                            "or start a new --workdir with init.source=checkpoint to change it")
    record = meta.get(DATA_CONTRACT)
    saved = (record.get("tokenizer") if isinstance(record, dict) else None) or saved_tokenizer
    if saved and given_tokenizer and saved != given_tokenizer:
        raise UserError(f"data.tokenizer_dir holds another vocabulary than the tokenizer the run in {where} was "
                        "trained with; resume with --config.data.tokenizer_dir='' (the copy the checkpoint carries), "
                        "or start a new --workdir with init.source=checkpoint to change it")


def saved_tokenizer_recorded(meta: dict) -> bool:
    record = meta.get(DATA_CONTRACT)
    return isinstance(record, dict) and bool(record.get("tokenizer"))


def write_tokenizer_dir(dst: str, write: Callable[[str], Any]) -> None:
    """`write(directory)` fills a tokenizer directory: `dst` itself locally; in a bucket a local temporary directory
    whose files are then uploaded, each whole."""
    if not storage.is_remote(dst):
        write(dst)
        return
    with tempfile.TemporaryDirectory(prefix="oq2vl_tokenizer_") as tmp:
        write(tmp)
        local_copy.upload_dir(tmp, dst)


def copy_tokenizer(src_dir: str, ckpt_dir: str) -> str:
    dst = storage.join(storage.resolve(ckpt_dir), TOKENIZER_DIR)
    if storage.resolve(src_dir) != dst:
        src = local_copy.local_dir(src_dir)
        write_tokenizer_dir(dst, lambda out: shutil.copytree(src, out, dirs_exist_ok=True))
    return dst


def _host_tree_handler() -> ocp.PyTreeCheckpointHandler:
    """Orbax's handler without its defensive deep copy of numpy arrays (pointless for a synchronous save) and without
    zstd (whose buffers, for float weights, are nearly as large as the data), so saving a host tree never holds it
    twice: a full-size conversion needs ~8 GiB instead of ~16."""
    th = ocp.type_handlers
    registry = th.create_type_handler_registry(
        (np.ndarray, th.NumpyHandler(deepcopy_host_arrays=False)), (jax.Array, th.ArrayHandler()),
        (int, th.ScalarHandler()), (float, th.ScalarHandler()), (np.number, th.ScalarHandler()))
    return ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)


def save_params(ckpt_dir: str, params: dict, config: VLMConfig, *, step: int = 0, tokenizer_dir: str | None = None,
                extra_items: dict[str, dict] | None = None, **meta: Any) -> str:
    """Writes a params-only checkpoint (what `convert import` produces) and waits for it to land. `extra_items` are
    further array trees saved as their own items (e.g. {VISION_EXTRA: tree}); read them back with `load_item`."""
    extra_items = {k: v for k, v in (extra_items or {}).items() if v}
    trees = {"params": params, **extra_items}
    handlers = {name: _host_tree_handler() for name in trees} | {"meta": ocp.JsonCheckpointHandler()}
    options = orbax_s3.checkpoint_manager_options(ckpt_dir, enable_async_checkpointing=False, create=True)
    with ocp.CheckpointManager(storage.resolve(ckpt_dir), options=options, item_handlers=handlers) as mngr:
        mngr.save(step, args=ocp.args.Composite(meta=ocp.args.JsonSave(make_meta(config, **meta)),
                                                **{name: ocp.args.PyTreeSave(tree) for name, tree in trees.items()}))
        mngr.wait_until_finished()
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, ckpt_dir)
    return storage.join(storage.resolve(ckpt_dir), str(step))


def resolve_step(ckpt_dir: str, step: int | None = None) -> int:
    if not storage.isdir(storage.resolve(ckpt_dir)):
        raise UserError(f"checkpoint directory '{ckpt_dir}' does not exist")
    with manager(ckpt_dir, async_save=False) as mngr:
        steps = mngr.all_steps()
    if not steps:
        raise UserError(f"'{ckpt_dir}' holds no finished oq2vl_jax checkpoint (no step directories)")
    if step is None:
        return max(steps)
    if step not in steps:
        raise UserError(f"step {step} is not in '{ckpt_dir}' (available: {sorted(steps)})")
    return step


class DamagedCheckpoint(UserError):
    """A step whose files do not restore (truncated, missing, JSON that does not parse)."""


def _damaged(ckpt_dir: str, step: int, error: Exception) -> DamagedCheckpoint:
    try:
        with manager(ckpt_dir, async_save=False) as mngr:
            others = sorted(s for s in mngr.all_steps() if s != step)
    except Exception:  # noqa: BLE001 (only for the message)
        others = []
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    hint = f"; other steps there: {others}" if others else ""
    return DamagedCheckpoint(f"checkpoint '{ckpt_dir}' step {step} is damaged and cannot be read ({reason}){hint}")


def _reading(ckpt_dir: str, step: int, read):
    """read() with any non-UserError failure turned into a one-line DamagedCheckpoint."""
    try:
        return read()
    except UserError:
        raise
    except Exception as e:
        quiet_aborted_restore()
        raise _damaged(ckpt_dir, step, e) from e


class _NoOrphanedTaskErrors(std_logging.Filter):
    def filter(self, record: std_logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


def is_out_of_space(error: BaseException | None) -> bool:
    """Whether `error`, or one it was raised from, is a full disk: an OSError with ENOSPC, or TensorStore's error
    (a ValueError whose text carries the OS message) as Orbax re-raises it from its writer threads."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


class _NoOutOfSpaceRecords(std_logging.Filter):
    """Drops the records that Orbax's writer threads (absl) and asyncio log, each with its traceback, for every array
    write that a full disk failed (1,300+ lines for one tiny checkpoint): the save's caller reports it in one line."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.exc_info and is_out_of_space(record.exc_info[1]):
            return False
        try:
            return os.strerror(errno.ENOSPC) not in record.getMessage()
        except Exception:  # a record whose arguments do not format: not ours to judge
            return True


def _is_late_callback(exc_type, exc, tb) -> bool:
    """TensorStore completing a write (or read) future after Orbax closed the asyncio loop that awaited it: its
    callback enters Python at `loop.call_soon_threadsafe`, which raises "Event loop is closed", printed through
    sys.excepthook with that call as the traceback's first frame (an error of ours always starts elsewhere)."""
    return (exc_type is RuntimeError and str(exc) == "Event loop is closed" and tb is not None
            and tb.tb_frame.f_code.co_name == "call_soon_threadsafe")


def quiet_out_of_space_records() -> None:
    """Installs `_NoOutOfSpaceRecords` (once) on the loggers Orbax's background writes report through, and drops the
    late-callback tracebacks of aborted writes (`_quiet_late_callbacks`). It must be in place before a save starts:
    those threads print before the caller learns that the save failed."""
    for name in ("absl", "asyncio"):
        logger = std_logging.getLogger(name)
        if not any(isinstance(f, _NoOutOfSpaceRecords) for f in logger.filters):
            logger.addFilter(_NoOutOfSpaceRecords())
    _quiet_late_callbacks()


def quiet_aborted_restore() -> None:
    """After a restore that failed mid-read, TensorStore still completes the read futures Orbax had started and tries
    to hand them to Orbax's asyncio loop, which is closed by then: each prints an "Event loop is closed" traceback
    (`_quiet_late_callbacks`), and asyncio logs the orphaned read tasks' errors with their tracebacks (dozens of
    them, after the one-line warning that already named the damaged step). Those, and only those, are dropped; every
    other unraisable exception reaches the previous hook and every other asyncio record is logged."""
    logger = std_logging.getLogger("asyncio")
    if not any(isinstance(f, _NoOrphanedTaskErrors) for f in logger.filters):
        logger.addFilter(_NoOrphanedTaskErrors())
    _quiet_late_callbacks()


def _quiet_late_callbacks() -> None:
    """Drops (once installed) the tracebacks of TensorStore callbacks that reach a closed asyncio loop after an aborted
    read or write: through sys.unraisablehook or, when the callback enters Python at `call_soon_threadsafe`,
    sys.excepthook (`_is_late_callback`); and the coroutines of an aborted write collected while the interpreter shuts
    down after the one error line. Everything else reaches the previous hooks."""
    if getattr(sys.unraisablehook, "_oq2vl_quiet", False):
        return
    previous_unraisable, previous_except = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        if isinstance(exc, ImportError) and "Python is likely shutting down" in str(exc):
            return
        previous_unraisable(unraisable)

    def except_hook(exc_type, exc, tb):
        if not _is_late_callback(exc_type, exc, tb):
            previous_except(exc_type, exc, tb)

    unraisable_hook._oq2vl_quiet = True
    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook


def load_meta(ckpt_dir: str, step: int | None = None) -> tuple[int, dict]:
    step = resolve_step(ckpt_dir, step)

    def read():
        with manager(ckpt_dir, async_save=False) as mngr:
            return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    meta = _reading(ckpt_dir, step, read)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"'{ckpt_dir}' step {step} is not an oq2vl_jax checkpoint (meta format {meta.get('format')})")
    return step, meta


def _restore_host(ckpt_dir: str, step: int, name: str) -> Any:
    """An array item as host numpy arrays, whatever mesh or handler wrote it (no devices involved)."""
    # The item's own handler on its directory: a CheckpointManager would also look at the step's other items and
    # warn (absl WARNING "Item ... could not be restored") for each one it was not given a handler for.
    from etils import epath

    directory = epath.Path(storage.resolve(ckpt_dir)) / str(step) / name
    orbax_s3.prepare(directory)
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(directory)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
        return handler.restore(directory, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    finally:
        handler.close()


def load_params(ckpt_dir: str, step: int | None = None, abstract_params: Any = None) -> tuple[VLMConfig, dict, dict]:
    """Returns (model config, params tree, meta). `abstract_params` (ShapeDtypeStructs with shardings) restores
    straight onto a mesh; without it arrays come back as host numpy arrays."""
    step, meta = load_meta(ckpt_dir, step)
    config = _reading(ckpt_dir, step, lambda: VLMConfig.from_dict(meta["model_config"]))
    if abstract_params is None:
        return config, _reading(ckpt_dir, step, lambda: _restore_host(ckpt_dir, step, "params")), meta

    def read():
        with manager(ckpt_dir, async_save=False) as mngr:
            return mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract_params)))["params"]
    return config, _reading(ckpt_dir, step, read), meta


def load_item(ckpt_dir: str, name: str, step: int | None = None) -> dict | None:
    """An optional array item (e.g. VISION_EXTRA) of a step as host numpy arrays, or None when that step has none."""
    step = resolve_step(ckpt_dir, step)
    if not storage.isdir(storage.join(storage.resolve(ckpt_dir), str(step), name)):
        return None
    return _reading(ckpt_dir, step, lambda: _restore_host(ckpt_dir, step, name))


def tokenizer_path(ckpt_dir: str) -> str | None:
    """The checkpoint's tokenizer directory (a local copy of it for a bucket checkpoint), or None."""
    path = storage.join(ckpt_dir, TOKENIZER_DIR)
    if storage.is_remote(path):
        return local_copy.local_dir(path) if storage.isdir(path) else None
    return path if os.path.isdir(path) else None
