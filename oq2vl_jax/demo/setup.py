"""The demo config's data: the synthetic set (demo/shapes.py) written once and used only where the user gave no data.

`prepare_demo_data(config, workdir)` is what the trainer calls for a config with a `demo` block:

- `demo.enabled=False`, or `data.sources` given by the user: the demo data is not used (logged); the user's
  `data.*` fields stand and the held-out attribute score is skipped. Returns None.
- otherwise the demo set is written once into `demo.data_dir` (default WORKDIR/demo_data) and `data.sources`, and the
  `eval_sources` / `tokenizer_dir` the user left empty, point at it (each logged). Returns the demo paths.

The directory is the project's only when it carries the marker `paths.json` written here. An existing non-empty
directory without it, or a file at that path, is refused with one line naming it (UserError): nothing the project did
not create is ever deleted or overwritten. The set is written into a fresh temporary directory beside it and moved in
place with one rename, so a crash leaves no half-written demo directory.

A bucket (gs://, s3://) data_dir, e.g. the default under a bucket workdir, has no rename: the object PARTIAL_FILE is
written first, then the set (written locally, uploaded object by object), then the marker, and PARTIAL_FILE is
removed; a prefix left with PARTIAL_FILE and no marker is an upload cut short, ours to clear and write again. Training
then reads the shards from the bucket; the returned paths (for the attribute score) are local copies of the eval set
and the tokenizer (`local_paths`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import logging

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, paths as storage

DEMO_PATHS_FILE = "paths.json"  # the marker: written last, names the demo set's parts relative to the directory
DEMO_KEYS = ("train", "eval", "eval_meta", "tokenizer_dir")
PARTIAL_FILE = ".oq2vl_partial"  # in a bucket: an upload of ours is under way (or was cut short) under this prefix


def read_marker(data_dir: str, keys: tuple[str, ...] = DEMO_KEYS) -> dict | None:
    """The paths (absolute) of a complete set written by `write_marked_dir` into data_dir, else None. The one reader
    of the demo's markers (the pre-training demo's and the SFT demo's, whose `keys` differ)."""
    try:
        rel = json.loads(storage.read_bytes(storage.join(data_dir, DEMO_PATHS_FILE)))
    except (OSError, ValueError):
        return None
    if not isinstance(rel, dict) or any(not isinstance(rel.get(k), str) for k in keys):
        return None
    return {k: storage.join(data_dir, v) for k, v in rel.items()}


def local_paths(paths: dict) -> dict:
    """The demo paths on local disk: as they are, or local copies of a bucket set's (storage/local_copy.py)."""
    return {k: (local_copy.local_file(v) if storage.isfile(v) else local_copy.local_dir(v))
            if storage.is_remote(v) else v for k, v in paths.items()}


def check_demo_dir(data_dir: str, field: str = "demo.data_dir", keys: tuple[str, ...] = DEMO_KEYS) -> None:
    """Refuses (UserError) a path holding anything this project did not write there."""
    if storage.is_remote(data_dir):
        if storage.isfile(data_dir):
            raise UserError(f"{field}: {data_dir} is an object, not a prefix; refusing to replace it (set "
                            f"--config.{field} to a new or empty prefix)")
        entries = storage.listdir(data_dir)
        if entries and PARTIAL_FILE not in entries and read_marker(data_dir, keys) is None:
            raise UserError(f"{field}: {data_dir} is not empty and holds no demo data (no {DEMO_PATHS_FILE}); "
                            f"refusing to write there (set --config.{field} to a new or empty prefix)")
        return
    if os.path.lexists(data_dir) and not os.path.isdir(data_dir):
        raise UserError(f"{field}: {data_dir} exists and is not a directory; refusing to replace it (set "
                        f"--config.{field} to a new or empty directory)")
    if os.path.isdir(data_dir) and os.listdir(data_dir) and read_marker(data_dir, keys) is None:
        raise UserError(f"{field}: {data_dir} is not empty and holds no demo data (no {DEMO_PATHS_FILE}); "
                        f"refusing to write there (set --config.{field} to a new or empty directory)")


def write_marked_dir(data_dir: str, write, *, field: str, keys: tuple[str, ...]) -> dict:
    """Writes a demo set into data_dir (new or empty) atomically: `write(tmp_dir)` returns the set's paths, the marker
    naming them is written last, then the directory is moved into place. Returns the paths."""
    check_demo_dir(data_dir, field, keys)
    if storage.is_remote(data_dir):
        return _write_marked_prefix(data_dir, write, keys=keys)
    parent = os.path.dirname(data_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(data_dir)}.", suffix=".tmp", dir=parent)
    try:
        paths = write(tmp)
        with open(os.path.join(tmp, DEMO_PATHS_FILE), "w") as f:
            json.dump({k: os.path.relpath(v, tmp) for k, v in paths.items()}, f)
        if os.path.isdir(data_dir):
            os.rmdir(data_dir)  # empty (checked above); rmdir refuses if anything appeared since
        os.replace(tmp, data_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # our own temporary directory only
        raise
    return read_marker(data_dir, keys)


def _write_marked_prefix(data_dir: str, write, *, keys: tuple[str, ...]) -> dict:
    """write_marked_dir for a bucket prefix (module docstring): PARTIAL_FILE, the set, the marker, no PARTIAL_FILE."""
    for name in storage.listdir(data_dir):  # an upload of ours cut short (check_demo_dir): cleared first
        if name != PARTIAL_FILE:
            storage.remove_tree(storage.join(data_dir, name))
    partial = storage.join(data_dir, PARTIAL_FILE)
    storage.write_bytes(partial, b"")
    with tempfile.TemporaryDirectory(prefix="oq2vl_demo_") as tmp:
        paths = write(tmp)
        local_copy.upload_dir(tmp, data_dir)
        rel = {k: os.path.relpath(v, tmp).replace(os.sep, "/") for k, v in paths.items()}
    storage.write_text(storage.join(data_dir, DEMO_PATHS_FILE), json.dumps(rel))
    storage.remove(partial)
    return read_marker(data_dir, keys)


def write_demo_dir(data_dir: str, *, num_train: int, num_eval: int, image_size: int, seed: int) -> dict:
    """Writes the demo set into data_dir (new or empty) atomically; returns its paths."""
    from oq2vl_jax.demo import shapes as demo

    logging.info("demo: writing the synthetic demo dataset to %s", data_dir)
    return write_marked_dir(data_dir, lambda tmp: demo.write_demo_dataset(
        tmp, num_train=num_train, num_eval=num_eval, image_size=image_size, seed=seed),
        field="demo.data_dir", keys=DEMO_KEYS)


def prepare_demo_data(config, workdir: str) -> dict | None:
    """See the module docstring. Mutates config.data (the trainer's resolved copy)."""
    if "demo" not in config:
        return None
    d = config.demo
    if not d.get("enabled", True):
        logging.info("demo: demo.enabled=False; using the config's data.* as given")
        return None
    if config.data.sources:
        logging.info("demo: data.sources given; the demo data is not used (and the attribute score is skipped)")
        return None
    import jax  # lazy: the data package does not need jax otherwise

    data_dir = storage.resolve(d.data_dir or storage.join(workdir, "demo_data"))
    check_demo_dir(data_dir)  # on every process, before anything is written
    if jax.process_index() == 0 and read_marker(data_dir) is None:
        write_demo_dir(data_dir, num_train=int(d.num_train), num_eval=int(d.num_eval),
                       image_size=int(config.data.image_size), seed=int(d.seed))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("demo data written")
    paths = read_marker(data_dir)
    if paths is None:
        raise UserError(f"demo.data_dir: {data_dir} holds no complete demo set ({DEMO_PATHS_FILE} missing); is it on "
                        "a file system every process sees?")
    config.data.sources = ({"kind": "webdataset", "path": paths["train"]},)
    used = ["data.sources"]
    if not config.data.eval_sources:
        config.data.eval_sources = ({"kind": "webdataset", "path": paths["eval"]},)
        used.append("data.eval_sources")
    if not config.data.tokenizer_dir:
        config.data.tokenizer_dir = paths["tokenizer_dir"]
        used.append("data.tokenizer_dir")
    logging.info("demo: no data.sources given; %s set to the synthetic demo data in %s (set "
                 "--config.data.sources=... to train on your own, or --config.demo.enabled=False)",
                 ", ".join(used), data_dir)
    return local_paths(paths)
