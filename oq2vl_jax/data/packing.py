"""Online, buffered first-fit-decreasing (FFD) packing as a checkpointable Grain `IterDataset`.

Each round buffers at least `buffer_size` documents from the parent, sorts them by length, descending (stable: ties
keep arrival order, like the reference's offline packer, REFERENCE.md §2.3), puts each into the first row that has
room for its tokens (an image counts as tokens_per_image positions; the document length already includes them) and
for its images, opens a new row otherwise, and emits the rows (optionally in a seeded random order).

Checkpointing follows Grain's packing iterators: the state is the parent's state at the start of the current round,
the number of rows of that round already emitted, and the round number. Restoring re-reads the round's documents,
re-packs them (deterministically) and skips the rows already emitted, so a restored iterator yields exactly the rows
the uninterrupted one would have.

Parent elements are {"documents": [PackedDocument, ...], "stats": {reason: count}}; the skip/repair counts of a
round ride on its first emitted row, so they are emitted exactly once, also across a restore.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import grain
import numpy as np

from oq2vl_jax.data.tokenizer import DocumentLayout


@dataclasses.dataclass(frozen=True)
class PackedDocument:
    """A document waiting to be packed: its token layout, its encoded images (decoded after packing), its id."""
    layout: DocumentLayout
    images: tuple[bytes, ...]
    doc_id: tuple[str, int, int]  # (source name, record index, document index within the record)

    @property
    def length(self) -> int:
        return self.layout.length

    @property
    def num_images(self) -> int:
        return self.layout.num_images


def ffd_pack(lengths: Sequence[int], num_images: Sequence[int], row_length: int,
             max_images_per_row: int) -> list[list[int]]:
    """First-fit-decreasing: returns rows as lists of item indices (rows in opening order, items in placement order).

    Every item must fit an empty row (length <= row_length, images <= max_images_per_row).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    room: list[int] = []
    image_room: list[int] = []
    for i in order:
        length, images = lengths[i], num_images[i]
        if length > row_length or images > max_images_per_row:
            raise ValueError(f"item {i} ({length} tokens, {images} images) does not fit an empty row")
        for r in range(len(rows)):
            if room[r] >= length and image_room[r] >= images:
                rows[r].append(i)
                room[r] -= length
                image_room[r] -= images
                break
        else:
            rows.append([i])
            room.append(row_length - length)
            image_room.append(max_images_per_row - images)
    return rows


class FFDPackDatasetIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, *, row_length: int, max_images_per_row: int,
                 buffer_size: int, seed: int, shuffle_rows: bool):
        super().__init__(parent)
        self._row_length, self._max_images = row_length, max_images_per_row
        self._buffer_size, self._seed, self._shuffle_rows = buffer_size, seed, shuffle_rows
        self._round = 0
        self._rows: list[dict] | None = None  # the current round's rows while some are not yet emitted
        self._emitted = 0
        self._round_start: Any = None
        self._rows_to_skip = 0  # set by set_state: rows of the restored round already emitted before the checkpoint

    def _pack_round(self) -> bool:
        self._round_start = self._parent.get_state()
        documents: list[PackedDocument] = []
        stats: dict[str, int] = {}
        while len(documents) < self._buffer_size:
            try:
                element = next(self._parent)
            except StopIteration:
                break
            documents.extend(element["documents"])
            for key, value in element["stats"].items():
                stats[key] = stats.get(key, 0) + value
        if not documents and not any(stats.values()):
            return False
        groups = ffd_pack([d.length for d in documents], [d.num_images for d in documents], self._row_length,
                          self._max_images)
        if self._shuffle_rows and len(groups) > 1:
            permutation = np.random.default_rng([self._seed, self._round]).permutation(len(groups))
            groups = [groups[j] for j in permutation]
        # A round of only skipped records still emits one (empty) row so its counts are not lost.
        self._rows = [{"documents": [documents[i] for i in g], "stats": {}} for g in groups] or [
            {"documents": [], "stats": {}}]
        self._rows[0]["stats"] = stats
        self._emitted = 0
        return True

    def __next__(self) -> dict:
        if self._rows is None:
            if not self._pack_round():
                raise StopIteration
            if self._rows_to_skip:
                if self._rows_to_skip >= len(self._rows):
                    raise RuntimeError("restored packing round has fewer rows than the checkpoint says were emitted; "
                                       "the upstream pipeline is not deterministic")
                self._emitted, self._rows_to_skip = self._rows_to_skip, 0
        row = self._rows[self._emitted]
        self._emitted += 1
        if self._emitted == len(self._rows):
            self._rows = None
            self._round += 1
        return row

    def get_state(self) -> dict[str, Any]:
        if self._rows is None:
            return {"parent": self._parent.get_state(), "rows_emitted": self._rows_to_skip, "round": self._round}
        return {"parent": self._round_start, "rows_emitted": self._emitted, "round": self._round}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._round = int(state["round"])
        self._rows, self._emitted = None, 0
        self._rows_to_skip = int(state["rows_emitted"])

    def __str__(self) -> str:
        return (f"FFDPackDatasetIterator(row_length={self._row_length}, max_images={self._max_images}, "
                f"buffer={self._buffer_size})")


class FFDPackIterDataset(grain.IterDataset):
    """Buffered first-fit-decreasing packing of {"documents", "stats"} elements into rows {"documents", "stats"}."""

    def __init__(self, parent: grain.IterDataset, *, row_length: int, max_images_per_row: int, buffer_size: int,
                 seed: int = 0, shuffle_rows: bool = True):
        super().__init__(parent)
        if row_length <= 0 or max_images_per_row < 0 or buffer_size <= 0:
            raise ValueError("row_length and buffer_size must be positive, max_images_per_row >= 0")
        self._kwargs = dict(row_length=row_length, max_images_per_row=max_images_per_row, buffer_size=buffer_size,
                            seed=seed, shuffle_rows=shuffle_rows)

    def __iter__(self) -> FFDPackDatasetIterator:
        return FFDPackDatasetIterator(self._parent.__iter__(), **self._kwargs)

    def __str__(self) -> str:
        return f"FFDPackIterDataset({self._kwargs})"
