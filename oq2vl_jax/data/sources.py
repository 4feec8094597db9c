"""Random-access record sources (Grain `RandomAccessDataSource`s: `len(src)`, `src[i]`).

Every source returns plain dict records; nothing is unpickled and nothing is extracted to disk.

Caption-like sources ("webdataset", "packed_json", "tfds", "parquet") return
    {"source": name, "index": i, "key": str, "documents": [{"key": str, "parts": [("image", bytes) |
     ("text", str), ...]}, ...], "skips": {reason: n}, "repairs": {reason: n}}
where a record may hold several documents (a reference packed JSON file) or none (its problem is in "skips").

Conversation sources ("llava", "mammoth") live in conversations.py (records with "conversations" and "images"; chat
formatting by data/chat.py, chosen by data.chat_format).

Command line:
    python -m oq2vl_jax.data.sources index PATH [PATH ...] [--index-dir D] [--workers N] [--force]
    python -m oq2vl_jax.data.sources convert-packed-json SRC OUT_DIR [--shard-size N]
    python -m oq2vl_jax.data.sources info KIND PATH [--image-root R]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import glob
import json
import os
import sys
from typing import Any, Mapping

import numpy as np

from oq2vl_jax.data import shard_paths
from oq2vl_jax.data.config import SOURCE_KEYS
from oq2vl_jax.data.conversations import LlavaSource, MammothSource
from oq2vl_jax.data.parquet_source import ParquetSource
from oq2vl_jax.data.selection import SelectedSource
from oq2vl_jax.data.webdataset import WebDatasetSource, build_index
from oq2vl_jax.errors import UserError

SOURCE_KINDS = tuple(SOURCE_KEYS)  # data/config.py: the keys of each kind
CAPTION_KINDS = ("webdataset", "packed_json", "tfds", "parquet")
CONVERSATION_KINDS = ("llava", "mammoth")


def _new_record(name: str, index: int, key: str) -> dict:
    return {"source": name, "index": index, "key": key, "documents": [], "skips": {}, "repairs": {}}


def _text(value: Any, record: dict) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            record["repairs"]["repaired_text_utf8"] = record["repairs"].get("repaired_text_utf8", 0) + 1
            return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _count(record: dict, reason: str) -> None:
    record["skips"][reason] = record["skips"].get(reason, 0) + 1


class PackedJsonSource:
    """The reference's `*_packed.json` files (docs/reference_notes.md §5); one record = one file = all its documents.

    Each `info` in "data" has aligned "image_info" / "texts" lists (an image {"image_base64": ...} or null, a text or
    null). The reference's bins are not kept: every info is re-tokenized as a document and re-packed by our FFD
    packer, because our document layout and tokens_per_image may differ from the 144-token budget the bins used.
    Shuffling is per file, as the reference's sampler does.
    """

    def __init__(self, path: str, *, name: str | None = None):
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.isfile(path):
            self.files = [path]
        elif os.path.isdir(path):
            self.files = sorted(glob.glob(os.path.join(path, "**", "*packed.json"), recursive=True))
        else:
            raise UserError(f"packed_json path {path!r} does not exist")
        if not self.files:
            raise UserError(f"packed_json path {path!r} contains no *packed.json files")
        self.name = name or os.path.basename(path.rstrip("/"))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        path = self.files[index]
        record = _new_record(self.name, index, path)
        try:
            with open(path, "rb") as f:
                data = json.loads(f.read())
            infos = data["data"]
            if not isinstance(infos, list):
                raise ValueError("'data' is not a list")
        except (OSError, ValueError, KeyError, TypeError):
            _count(record, "record_unreadable")
            return record
        for j, info in enumerate(infos):
            doc = self._document(info, f"{path}:{j}", record)
            if doc is not None:
                record["documents"].append(doc)
        return record

    @staticmethod
    def _document(info: Any, default_key: str, record: dict) -> dict | None:
        try:
            images, texts = info["image_info"], info["texts"]
            if len(images) != len(texts):
                raise ValueError("image_info and texts differ in length")
        except (KeyError, TypeError, ValueError):
            _count(record, "record_unreadable")
            return None
        parts = []
        for image, text in zip(images, texts):
            if image is not None:
                try:
                    parts.append(("image", base64.b64decode(image["image_base64"], validate=True)))
                except (KeyError, TypeError, ValueError, binascii.Error):
                    _count(record, "image_corrupt")
                    return None
            elif text is not None:
                parts.append(("text", _text(text, record)))
        if not any(kind == "text" for kind, _ in parts):
            _count(record, "caption_missing")
            return None
        return {"key": str(info.get("key", default_key)), "parts": parts}


class TfdsSource:
    """A TFDS dataset prepared in array_record format, read with `tfds.data_source` (no TensorFlow needed).

    Images are read undecoded (`tfds.decode.SkipDecoding`) and decoded with PIL like every other source. `path` may
    be a prepared dataset directory (the one with dataset_info.json) or empty to use `name` + `data_dir`.
    """

    def __init__(self, *, name: str = "", split: str = "train", data_dir: str | None = None, path: str = "",
                 image_key: str = "image", text_key: str = "text", source_name: str | None = None, _data_source=None):
        self.tfds_name, self.split, self.data_dir, self.path = name, split, data_dir, path
        self.image_key, self.text_key = image_key, text_key
        self.name = source_name or name or os.path.basename(path.rstrip("/"))
        self._ds = _data_source if _data_source is not None else self._open()
        self._injected = _data_source is not None
        self._len = len(self._ds)

    def _open(self):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise UserError("source kind 'tfds' needs the optional package tensorflow-datasets (and array_record): "
                            "pip install tensorflow-datasets array_record; TensorFlow itself is not needed") from e
        decoders = {self.image_key: tfds.decode.SkipDecoding()}
        try:
            if self.path:
                builder = tfds.builder_from_directory(self.path)
                return builder.as_data_source(split=self.split, decoders=decoders)
            return tfds.data_source(self.tfds_name, split=self.split, data_dir=self.data_dir, download=False,
                                    decoders=decoders)
        except Exception as e:
            raise UserError(f"cannot open TFDS dataset {self.tfds_name or self.path!r} split {self.split!r}: "
                            f"{type(e).__name__}: {e}") from e

    def __getstate__(self):
        state = dict(self.__dict__)
        if not self._injected:
            state["_ds"] = None  # reopened in each worker process
        return state

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if self._ds is None:
            self._ds = self._open()
        record = _new_record(self.name, index, f"{self.name}:{index}")
        try:
            example = self._ds[index]
        except Exception:
            _count(record, "record_unreadable")
            return record
        image, text = example.get(self.image_key), example.get(self.text_key)
        if image is None or len(image) == 0:
            _count(record, "image_missing")
        elif text is None:
            _count(record, "caption_missing")
        else:
            record["documents"].append({"key": record["key"], "parts": [("image", bytes(image)),
                                                                       ("text", _text(text, record))]})
        return record


def check_source_path(spec: Mapping[str, Any], field: str) -> None:
    """Cheap start-up check of a source entry's path (a webdataset path may be a pattern or a list): UserError
    saying what is wrong with it (missing, or a directory without shards)."""
    path = spec.get("path") or ""
    if not path or isinstance(path, str) and path.startswith(("gs://", "s3://")):
        return
    if spec.get("kind") == "webdataset":
        try:
            shard_paths.expand_shards(path)
        except UserError as e:
            raise UserError(f"{field}.path: {e}") from None
    elif not os.path.exists(os.path.expanduser(str(path))):
        raise UserError(f"{field}.path: {path!r} does not exist")


def source_path_exists(spec: Mapping[str, Any]) -> bool:
    try:
        check_source_path(spec, "source")
        return True
    except UserError:
        return False


def open_source(spec: Mapping[str, Any], field: str = "source"):
    """Opens one source from its config entry {kind, path, ...extras}; errors name `field`."""
    kind = spec.get("kind")
    if kind not in SOURCE_KINDS:
        raise UserError(f"{field}.kind must be one of {SOURCE_KINDS}, got {kind!r}")
    name = spec.get("name") or None
    if kind == "webdataset":  # a path, a glob / brace pattern, or a list of them (data/shard_paths.py)
        try:
            source = WebDatasetSource(spec.get("path"), index_dir=spec.get("index_dir") or None, name=name)
        except UserError as e:
            raise UserError(f"{field}.path: {e}") from None
        if not spec.get("select"):
            return source
        try:  # a selection file (data/selection.py) restricts the source to its rows, without copying
            return SelectedSource(source, spec["select"])
        except UserError as e:
            raise UserError(f"{field}.select: {e}") from None
    path = str(spec.get("path") or "")
    if kind not in ("tfds", "parquet") and not os.path.exists(os.path.expanduser(path)):
        raise UserError(f"{field}.path: {path!r} does not exist")
    try:
        if kind == "packed_json":
            return PackedJsonSource(path, name=name)
        if kind == "parquet":  # Hugging Face parquet datasets (data/parquet_source.py); path may be a glob
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


def convert_packed_json(src: str, out_dir: str, shard_size: int = 10000) -> dict[str, int]:
    """Rewrites reference packed JSON files as WebDataset shards (caption documents only) for per-sample shuffling."""
    from oq2vl_jax.data.demo import write_tar_shard
    from oq2vl_jax.data.images import probe_image, BadImage

    source = PackedJsonSource(src)
    counts = {"written": 0, "skipped_interleaved": 0, "skipped_other": 0}
    samples, shard = [], 0
    for i in range(len(source)):
        record = source[i]
        counts["skipped_other"] += sum(record["skips"].values())
        for doc in record["documents"]:
            parts = doc["parts"]
            if [k for k, _ in parts] != ["image", "text"]:
                counts["skipped_interleaved"] += 1
                continue
            try:
                probe_image(parts[0][1])
            except BadImage:
                counts["skipped_other"] += 1
                continue
            key = f"{counts['written']:09d}"
            samples.append({"__key__": key, "jpg": parts[0][1], "txt": parts[1][1], "json": {"key": doc["key"]}})
            counts["written"] += 1
            if len(samples) == shard_size:
                write_tar_shard(os.path.join(out_dir, f"{shard:05d}.tar"), samples)
                samples, shard = [], shard + 1
    if samples:
        write_tar_shard(os.path.join(out_dir, f"{shard:05d}.tar"), samples)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oq2vl_jax.data.sources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_index = sub.add_parser("index", help="build the member index of WebDataset shards (one index per PATH)")
    p_index.add_argument("paths", nargs="+", metavar="PATH",
                         help="a shard directory, one .tar, or a quoted glob / brace range ('dir/{00000..00099}.tar')")
    p_index.add_argument("--index-dir", default=None, help="write the index here instead of next to the shards")
    p_index.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    p_index.add_argument("--force", action="store_true", help="rebuild even if an up-to-date index exists")
    p_conv = sub.add_parser("convert-packed-json", help="rewrite reference *_packed.json files as WebDataset tars")
    p_conv.add_argument("src")
    p_conv.add_argument("out_dir")
    p_conv.add_argument("--shard-size", type=int, default=10000)
    p_info = sub.add_parser("info", help="print the number of records of a source and its first record's keys")
    p_info.add_argument("kind", choices=SOURCE_KINDS)
    p_info.add_argument("path")
    p_info.add_argument("--image-root", default="")
    args = parser.parse_args(argv)
    from absl import logging
    logging.set_verbosity(logging.INFO)
    try:
        if args.command == "index":
            for path in args.paths:
                index = build_index(path, args.index_dir, workers=args.workers, force=args.force)
                source = WebDatasetSource(path, index_dir=os.path.dirname(index))
                print(f"{path}: {len(source)} records, index {index}, problems: {source.problems or 'none'}")
        elif args.command == "convert-packed-json":
            print(json.dumps(convert_packed_json(args.src, args.out_dir, args.shard_size)))
        else:
            source = open_source({"kind": args.kind, "path": args.path, "image_root": args.image_root})
            first = source[0] if len(source) else {}
            print(f"{source.name}: {len(source)} records; first record: "
                  f"{ {k: (type(v).__name__ if isinstance(v, (bytes, list)) else v) for k, v in first.items()} }")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
