"""SFT conversation sources (LLaVA JSON, MAmmoTH-VL) and conversation records -> training documents.

Sources are Grain random-access sources read lazily through a byte-offset index (data/sources/json_index.py), so a 21 GB
JSON is never loaded whole. Each record is

    {"source", "index", "key", "conversations": [{"from", "value"}, ...], "images": [bytes | None, ...],
     "image_paths": [str, ...], "skips": {reason: n}, "repairs": {}}

with one entry of "images" per image the sample names (None when the file cannot be read).

  LlavaSource ("llava"): a JSON list (or JSON lines) of `{"id", "image"?: relpath | [relpaths], "conversations"}`,
    images under `image_root` (LLaVA-665k: coco/train2017, gqa/images, ocr_vqa/images, textvqa/train_images,
    vg/VG_100K{,_2}).
  MammothSource ("mammoth"): the original's split layout (data_prepare/split_mammoth_10m.py): `*_simple.jsonl` lines
    `{"path": name, "length": n}` pointing at `dirname(jsonl)/instruction_si_split/{name}`, each a LLaVA-style sample;
    or the raw `mammoth_si_10M.json` (a LLaVA-style list). Images under `image_root` (the original's
    `single_image_data`).

`ConversationFormatter` turns a record into documents with text/chat.py: images are header-checked first; an unusable
image (missing, corrupt, too large) either keeps the sample as a text-only conversation, its `<image>` placeholders
removed (`missing_image="text_only"`, the default; counted as "repaired_image_dropped"), or drops it, counted under
the image's reason (image_missing, image_corrupt, ...; `missing_image="skip"`). A conversation with nothing left to
train on is counted as "conversation_invalid". The original trains such samples on a grey dummy
image instead (prismatic-vlms/prismatic/preprocessing/datasets/datasets.py: a failed load gives pixel_values=None).
"""

from __future__ import annotations

import os
from typing import Any

from oq2vl_jax.data.images import BadImage, probe_image
from oq2vl_jax.data.sources.json_index import JsonRecords
from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import local_copy, paths as storage
from oq2vl_jax.text import chat
from oq2vl_jax.text.documents import DocumentLayout, TextEncoder

MAMMOTH_SPLIT_DIR = "instruction_si_split"
MISSING_IMAGE_POLICIES = ("text_only", "skip")
REPAIRED_IMAGE_DROPPED = "repaired_image_dropped"  # repair reason (data/stats.py): kept as a text-only conversation


def _count(counts: dict, reason: str, n: int = 1) -> None:
    counts[reason] = counts.get(reason, 0) + n


def _read_file(path: str) -> bytes | None:
    try:
        return storage.read_bytes(path)  # a local file, or an object when image_root is a bucket prefix
    except OSError:
        return None


def _image_list(value: Any) -> list[str] | None:
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return list(value)
    return None


class _ConversationSource:
    """Shared record building: index -> sample dict -> record with image bytes."""

    def __init__(self, path: str, *, image_root: str = "", name: str | None = None, index_dir: str | None = None,
                 kind: str):
        self.path = storage.resolve(path)
        if not storage.isfile(self.path):
            raise UserError(f"{kind} path {self.path!r} is not a file")
        self.image_root = storage.resolve(image_root or storage.dirname(self.path))
        self.name = name or os.path.basename(self.path)
        # a bucket's JSON is indexed and read from a local copy (made once per object version); images from the bucket
        self.records = JsonRecords(local_copy.local_file(self.path), index_dir)

    def __len__(self) -> int:
        return len(self.records)

    def _sample(self, index: int) -> Any:
        return self.records[index]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        record = {"source": self.name, "index": index, "key": f"{self.name}:{index}", "conversations": [],
                  "images": [], "image_paths": [], "skips": {}, "repairs": {}}
        try:
            sample = self._sample(index)
        except (OSError, ValueError, KeyError, TypeError):
            _count(record["skips"], "record_unreadable")
            return record
        images = _image_list(sample.get("image")) if isinstance(sample, dict) else None
        if not isinstance(sample, dict) or not isinstance(sample.get("conversations"), list) or images is None:
            _count(record["skips"], "record_unreadable")
            return record
        record["key"] = str(sample.get("id", record["key"]))
        record["conversations"] = sample["conversations"]
        record["image_paths"] = [storage.join(self.image_root, rel) for rel in images]
        record["images"] = [_read_file(p) for p in record["image_paths"]]
        return record


class LlavaSource(_ConversationSource):
    """LLaVA-style SFT JSON list or JSON lines (module doc)."""

    def __init__(self, path: str, *, image_root: str = "", name: str | None = None, index_dir: str | None = None):
        super().__init__(path, image_root=image_root, name=name, index_dir=index_dir, kind="llava")


class MammothSource(_ConversationSource):
    """MAmmoTH-VL: `*_simple.jsonl` pointers into instruction_si_split/, or the raw LLaVA-style JSON (module doc)."""

    def __init__(self, path: str, *, image_root: str = "", name: str | None = None, index_dir: str | None = None):
        super().__init__(path, image_root=image_root, name=name, index_dir=index_dir, kind="mammoth")
        self.split_dir = os.path.join(os.path.dirname(self.path), MAMMOTH_SPLIT_DIR)

    def _sample(self, index: int) -> Any:
        entry = self.records[index]
        if isinstance(entry, dict) and "conversations" not in entry and isinstance(entry.get("path"), str):
            import json
            with open(os.path.join(self.split_dir, entry["path"]), "rb") as f:
                return json.loads(f.read())
        return entry


class ConversationFormatter:
    """Conversation record -> ([(DocumentLayout, [image bytes])], counts). Picklable (Grain workers)."""

    def __init__(self, encoder: TextEncoder, *, chat_format: str, tokens_per_image: int, max_image_pixels: int,
                 missing_image: str = "text_only", reference_compat: bool = False):
        chat.check_chat_format(chat_format)
        if missing_image not in MISSING_IMAGE_POLICIES:
            raise UserError(f"data.missing_image must be one of {MISSING_IMAGE_POLICIES}, got {missing_image!r}")
        self.encoder, self.chat_format, self.tokens_per_image = encoder, chat_format, tokens_per_image
        self.max_image_pixels, self.missing_image = max_image_pixels, missing_image
        self.reference_compat = reference_compat

    def _usable_images(self, record: dict, counts: dict) -> list[bytes] | None:
        """The record's images, or None if one is unusable (its reason counted)."""
        for data in record["images"]:
            if data is None:
                _count(counts, "image_missing")
                return None
            try:
                probe_image(data, self.max_image_pixels)
            except BadImage as e:
                _count(counts, e.reason)
                return None
        return list(record["images"])

    def __call__(self, record: dict) -> tuple[list[tuple[DocumentLayout, list[bytes]]], dict[str, int]]:
        counts: dict[str, int] = {}
        problem: dict[str, int] = {}
        images = self._usable_images(record, problem)
        if images is None:
            if self.missing_image == "skip":
                return [], problem  # counted under its reason (image_missing, image_corrupt, ...)
            images = []
            _count(counts, REPAIRED_IMAGE_DROPPED)
        doc = chat.conversation_document(record["conversations"], self.chat_format, self.encoder,
                                         self.tokens_per_image, num_images=len(images),
                                         reference_compat=self.reference_compat)
        for reason, n in doc.counts.items():
            if not (reason == chat.REPAIRED_PLACEHOLDER and REPAIRED_IMAGE_DROPPED in counts):
                _count(counts, reason, n)
        if doc.layout is None:
            return [], counts
        if not doc.layout.target_mask.any():
            _count(counts, chat.REJECTED)
            return [], counts
        return [(doc.layout, images)], counts
