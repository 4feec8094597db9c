"""The source kinds and `open_source`: one config entry {kind, path, ...} -> a random-access source."""

from __future__ import annotations

from typing import Any, Mapping

from oq2vl_jax.data.sources import shard_paths
from oq2vl_jax.data.sources.conversations import LlavaSource, MammothSource
from oq2vl_jax.data.sources.packed_json import PackedJsonSource
from oq2vl_jax.data.sources.parquet import ParquetSource
from oq2vl_jax.data.sources.selection import SelectedSource
from oq2vl_jax.data.sources.tfds import TfdsSource
from oq2vl_jax.data.sources.webdataset import WebDatasetSource
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths as storage

SOURCE_KINDS = ("webdataset", "packed_json", "tfds", "parquet", "llava", "mammoth")
CAPTION_KINDS = ("webdataset", "packed_json", "tfds", "parquet")
CONVERSATION_KINDS = ("llava", "mammoth")


def source_path_exists(spec: Mapping[str, Any]) -> bool:
    """Cheap start-up check of a source entry's path (a webdataset path may be a pattern or a list)."""
    path = spec.get("path") or ""
    if spec.get("kind") == "webdataset":
        return shard_paths.source_path_exists(path)
    if spec.get("kind") == "parquet" and any(c in str(path) for c in "*?["):  # a glob of parquet files
        return bool(storage.glob(storage.resolve(path)))
    return storage.exists(storage.resolve(path))


def open_source(spec: Mapping[str, Any], field: str = "source"):
    """Opens one source from its config entry {kind, path, ...extras}; errors name `field`."""
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise UserError(f"{field}.kind must be one of {SOURCE_KINDS}, got {kind!r}")
    name = spec.get("name") or None
    if kind == "webdataset":  # a path, a glob / brace pattern, or a list of them (data/sources/shard_paths.py)
        try:
            source = WebDatasetSource(spec.get("path"), index_dir=spec.get("index_dir") or None, name=name)
        except UserError as e:
            raise UserError(f"{field}.path: {e}") from None
        if not spec.get("select"):
            return source
        try:  # a selection file (data/sources/selection.py) restricts the source to its rows, without copying
            return SelectedSource(source, spec["select"])
        except UserError as e:
            raise UserError(f"{field}.select: {e}") from None
    path = str(spec.get("path") or "")
    if kind not in ("tfds", "parquet") and not storage.exists(storage.resolve(path)):
        raise UserError(f"{field}.path: {path!r} does not exist")
    try:
        if kind == "packed_json":
            return PackedJsonSource(path, name=name)
        if kind == "parquet":  # Hugging Face parquet datasets (data/sources/parquet.py); path may be a glob
            return ParquetSource(path, image_column=spec.get("image_column", "image"),
                                 text_column=spec.get("text_column", "text"),
                                 text_json_path=spec.get("text_json_path", ""), name=name)
        if kind == "tfds":
            if not path and not spec.get("tfds_name"):
                raise UserError(f"{field}: a tfds source needs tfds_name (registered name) or path (prepared dir)")
            return TfdsSource(name=spec.get("tfds_name", ""), split=spec.get("split", "train"),
                              data_dir=spec.get("data_dir") or None, path=path,
                              image_key=spec.get("image_key", "image"), text_key=spec.get("text_key", "text"),
                              source_name=name)
        if kind == "llava":
            return LlavaSource(path, image_root=spec.get("image_root", ""), name=name,
                               index_dir=spec.get("index_dir") or None)
        return MammothSource(path, image_root=spec.get("image_root", ""), name=name,
                             index_dir=spec.get("index_dir") or None)
    except UserError as e:
        raise UserError(f"{field}: {e}") from None
