"""The reference's packed JSON files (`*_packed.json`) as a caption source, and their conversion to WebDataset tars
(`python -m oq2vl_jax.data.sources convert-packed-json`)."""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from oq2vl_jax.data.images import BadImage, probe_image
from oq2vl_jax.data.sources.records import count_skip, new_record, record_text
from oq2vl_jax.data.sources.webdataset import write_tar_shard
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths as storage


class PackedJsonSource:
    """The reference's `*_packed.json` files (docs/reference_notes.md §5); one record = one file = all its documents.

    Each `info` in "data" has aligned "image_info" / "texts" lists (an image {"image_base64": ...} or null, a text or
    null). The reference's bins are not kept: every info is re-tokenized as a document and re-packed by our FFD
    packer, because our document layout and tokens_per_image may differ from the 144-token budget the bins used.
    Shuffling is per file, as the reference's sampler does.
    """

    def __init__(self, path: str, *, name: str | None = None):
        path = storage.resolve(path)
        if storage.isfile(path):
            self.files = [path]
        elif storage.isdir(path):
            self.files = sorted(storage.find(path, "packed.json"))
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
        record = new_record(self.name, index, path)
        try:
            data = json.loads(storage.read_bytes(path))
            infos = data["data"]
            if not isinstance(infos, list):
                raise ValueError("'data' is not a list")
        except (OSError, ValueError, KeyError, TypeError):
            count_skip(record, "record_unreadable")
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
            count_skip(record, "record_unreadable")
            return None
        parts = []
        for image, text in zip(images, texts):
            if image is not None:
                try:
                    parts.append(("image", base64.b64decode(image["image_base64"], validate=True)))
                except (KeyError, TypeError, ValueError, binascii.Error):
                    count_skip(record, "image_corrupt")
                    return None
            elif text is not None:
                parts.append(("text", record_text(text, record)))
        if not any(kind == "text" for kind, _ in parts):
            count_skip(record, "caption_missing")
            return None
        return {"key": str(info.get("key", default_key)), "parts": parts}


def convert_packed_json(src: str, out_dir: str, shard_size: int = 10000) -> dict[str, int]:
    """Rewrites reference packed JSON files as WebDataset shards (caption documents only) for per-sample shuffling."""
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
