"""Hugging Face parquet datasets (image bytes + a text column) as a random-access caption source.

Config: {"kind": "parquet", "path": DIR | FILE | GLOB, "image_column": "image", "text_column": "text",
         "text_json_path": ""}
  image_column  binary, or the `datasets` Image feature: a struct {"bytes": binary, "path": string}
  text_column   a string; with `text_json_path` (dotted keys) the string is JSON and the caption is found inside it,
                e.g. SynthDoG (`naver-clova-ix/synthdog-*`, files data/train-*.parquet): text_column "ground_truth",
                text_json_path "gt_parse.text_sequence".

Random access: the row count of every row group is read from the parquet footers once (no data read); `src[i]`
reads the row group holding row i (only the two columns) and keeps the last few row groups decoded, so reading in
storage order costs one decode per row group, and a globally shuffled read costs one row-group decode per record
(use small row groups, or reshard large sets to WebDataset). File handles are opened lazily in each process.
A missing caption or image, or unparsable JSON, is a counted skip, not an error.
"""

from __future__ import annotations

import collections
import json
import os
import threading

import numpy as np

from oq2vl_jax.data.sources.records import count_skip, new_record
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths as storage

CACHED_ROW_GROUPS = 4


def list_parquet_files(path: str) -> list[str]:
    path = storage.resolve(path)
    if any(ch in path for ch in "*?["):
        files = sorted(storage.glob(path))
    elif storage.isdir(path):
        files = sorted(storage.find(path, ".parquet"))
    else:
        files = [path] if storage.isfile(path) else []
    if not files:
        raise UserError(f"parquet path {path!r} holds no .parquet files")
    return files


def _open(file: str):
    """A pyarrow ParquetFile; a bucket object is read through fsspec by ranged reads (footer, then row groups)."""
    import pyarrow.parquet as pq
    if storage.is_remote(file):
        return pq.ParquetFile(storage.filesystem(file).open(file, "rb"))
    return pq.ParquetFile(file)


class ParquetSource:
    def __init__(self, path: str, *, image_column: str = "image", text_column: str = "text",
                 text_json_path: str = "", name: str | None = None):
        self.files = list_parquet_files(path)
        self.image_column, self.text_column = image_column, text_column
        self.json_keys = [k for k in text_json_path.split(".") if k]
        self.name = name or os.path.basename(storage.resolve(path).rstrip("/"))
        groups = []  # (file index, row group, rows)
        for f, file in enumerate(self.files):
            try:
                meta = _open(file)
            except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
                raise UserError(f"parquet file {file} is not readable: {e}") from None
            columns = set(meta.schema_arrow.names)
            for column in (image_column, text_column):
                if column not in columns:
                    raise UserError(f"parquet file {file} has no column {column!r} (columns: {sorted(columns)}); "
                                    "set image_column / text_column")
            groups += [(f, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self._groups = np.array([(f, g) for f, g, _ in groups], np.int64).reshape(-1, 2)
        self._starts = np.concatenate([[0], np.cumsum([n for _, _, n in groups], dtype=np.int64)])
        self._handles: dict = {}
        self._cache: collections.OrderedDict = collections.OrderedDict()
        # Grain's read threads call __getitem__ at once; a pyarrow ParquetFile reader and the cache are not
        # thread-safe (concurrent read_row_group on one handle segfaulted). Reading a row group holds the lock;
        # decoding the images happens outside it.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"ParquetSource({len(self.files)} files, {len(self)} rows)"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_cache"] = {}, collections.OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _row_group(self, k: int) -> dict:
        with self._lock:
            return self._row_group_locked(k)

    def _row_group_locked(self, k: int) -> dict:
        if k in self._cache:
            self._cache.move_to_end(k)
            return self._cache[k]
        f, g = (int(x) for x in self._groups[k])
        if f not in self._handles:
            self._handles[f] = _open(self.files[f])
        table = self._handles[f].read_row_group(g, columns=[self.image_column, self.text_column])
        rows = {"image": table.column(self.image_column).to_pylist(), "text": table.column(self.text_column).to_pylist()}
        self._cache[k] = rows
        if len(self._cache) > CACHED_ROW_GROUPS:
            self._cache.popitem(last=False)
        return rows

    def _caption(self, value, record: dict):
        if value is None:
            return None
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not self.json_keys:
            return str(value)
        try:
            value = json.loads(value)
            for key in self.json_keys:
                value = value[key]
        except (ValueError, KeyError, TypeError, IndexError):
            count_skip(record, "record_unreadable")
            return False
        return None if value is None else str(value)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record = new_record(self.name, index, f"{self.name}:{index}")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        try:
            rows = self._row_group(k)
        except Exception:  # noqa: BLE001 - a damaged row group is counted, not fatal
            count_skip(record, "record_unreadable")
            return record
        j = index - int(self._starts[k])
        image, caption = rows["image"][j], self._caption(rows["text"][j], record)
        if isinstance(image, dict):
            image = image.get("bytes")
        if caption is False:
            return record
        if not image:
            count_skip(record, "image_missing")
        elif caption is None:
            count_skip(record, "caption_missing")
        else:
            record["documents"].append({"key": record["key"], "parts": [("image", bytes(image)), ("text", caption)]})
        return record
