"""Online, buffered first-fit-decreasing (FFD) packing as a checkpointable Grain `IterDataset`.

Each round buffers at least `buffer_size` documents from the parent, packs them into rows of `row_length` positions
with at most `max_images_per_row` images (an image counts as tokens_per_image positions; the document length already
includes them) and emits the rows, optionally in a seeded random order. Two algorithms:

  "ffd": plain first-fit-decreasing, as the reference's offline packer (docs/reference_notes.md §5): sort by length,
    descending (stable: ties keep arrival order), put each document into the first row with room for its tokens
    and images, open a new row otherwise.
  "ffd_fill": the same first-fit-decreasing pass per row, stopped while the row still has room for about
    FILL_RESERVE_DOCUMENTS of the largest remaining documents, then the rest of the row is filled with the subset of
    the remaining documents whose total length is the largest that fits (exact bounded subset sum). Captioned
    images make every document >= tokens_per_image + 4 long, so plain FFD leaves a gap of up to one short document
    in nearly every row (~2% at L=4096, T_img=144); filling the tail exactly removes most of it (see
    benchmarks/bench_data.py).
  "none": one document per row in arrival order, no packing (the reference's SFT batches: one conversation per
    padded row).

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

from oq2vl_jax.text.documents import DocumentLayout


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
    _check_fits(lengths, num_images, row_length, max_images_per_row)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    room: list[int] = []
    image_room: list[int] = []
    for i in order:
        length, images = lengths[i], num_images[i]
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


def no_pack(lengths: Sequence[int], num_images: Sequence[int], row_length: int,
            max_images_per_row: int) -> list[list[int]]:
    """"none": one document per row, in arrival order (the reference's SFT batches: one conversation per row)."""
    _check_fits(lengths, num_images, row_length, max_images_per_row)
    return [[i] for i in range(len(lengths))]


PACKING_ALGORITHMS = ("ffd", "ffd_fill", "none")
FILL_RESERVE_DOCUMENTS = 12  # room left to the exact fill: enough documents that their sums cover every gap


def _check_fits(lengths: Sequence[int], num_images: Sequence[int], row_length: int, max_images: int) -> None:
    for i, (length, images) in enumerate(zip(lengths, num_images)):
        if length > row_length or images > max_images:
            raise ValueError(f"item {i} ({length} tokens, {images} images) does not fit an empty row")


def _largest_subset(candidates: Sequence[int], lengths: Sequence[int], room: int) -> list[int]:
    """Items of `candidates` with the largest total length <= room (bounded subset sum over a bitset).

    Among equally good subsets it prefers short items (they are the ones that strand gaps when left for last).
    """
    groups: dict[int, list[int]] = {}
    for i in candidates:
        if lengths[i] <= room:
            groups.setdefault(lengths[i], []).append(i)
    pieces = []  # (size, length, copies): counts split in powers of two (bounded knapsack)
    for length in sorted(groups):
        count, chunk = len(groups[length]), 1
        while count:
            copies = min(chunk, count)
            pieces.append((length * copies, length, copies))
            count -= copies
            chunk *= 2
    reachable = np.zeros(room + 1, np.bool_)
    reachable[0] = True
    history = []
    for size, _, _ in pieces:
        history.append(reachable)
        if size <= room:
            reachable = reachable.copy()
            reachable[size:] |= history[-1][:room + 1 - size]
    total = int(np.flatnonzero(reachable)[-1])
    taken: dict[int, int] = {}
    for (size, length, copies), before in zip(reversed(pieces), reversed(history)):
        if total == 0:
            break
        if size <= total and not before[total] and before[total - size]:
            taken[length] = taken.get(length, 0) + copies
            total -= size
    return [i for length, copies in taken.items() for i in groups[length][:copies]]


def ffd_fill_pack(lengths: Sequence[int], num_images: Sequence[int], row_length: int,
                  max_images_per_row: int) -> list[list[int]]:
    """The "ffd_fill" algorithm (module doc): rows as lists of item indices, deterministic."""
    _check_fits(lengths, num_images, row_length, max_images_per_row)
    remaining = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable
    rows: list[list[int]] = []
    while remaining:
        room, image_room = row_length, max_images_per_row
        reserve = min(row_length, FILL_RESERVE_DOCUMENTS * lengths[remaining[0]])
        row, rest = [], []
        for i in remaining:
            if room - lengths[i] >= reserve and num_images[i] <= image_room:
                row.append(i)
                room -= lengths[i]
                image_room -= num_images[i]
            else:
                rest.append(i)
        chosen = _largest_subset(rest, lengths, room)
        if sum(num_images[i] for i in chosen) > image_room:  # rare (the image cap binds): fall back to first fit
            chosen = []
            for i in rest:
                if lengths[i] <= room and num_images[i] <= image_room:
                    chosen.append(i)
                    room -= lengths[i]
                    image_room -= num_images[i]
        taken = set(chosen)
        rows.append(row + sorted(chosen, key=lambda i: -lengths[i]))
        remaining = [i for i in rest if i not in taken]
    return rows


class FFDPackDatasetIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, *, row_length: int, max_images_per_row: int,
                 buffer_size: int, seed: int, shuffle_rows: bool, algorithm: str = "ffd"):
        super().__init__(parent)
        self._pack = {"ffd": ffd_pack, "ffd_fill": ffd_fill_pack, "none": no_pack}[algorithm]
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
        groups = self._pack([d.length for d in documents], [d.num_images for d in documents], self._row_length,
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
                 seed: int = 0, shuffle_rows: bool = True, algorithm: str = "ffd"):
        super().__init__(parent)
        if row_length <= 0 or max_images_per_row < 0 or buffer_size <= 0:
            raise ValueError("row_length and buffer_size must be positive, max_images_per_row >= 0")
        if algorithm not in PACKING_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {PACKING_ALGORITHMS}, got {algorithm!r}")
        self._kwargs = dict(row_length=row_length, max_images_per_row=max_images_per_row, buffer_size=buffer_size,
                            seed=seed, shuffle_rows=shuffle_rows, algorithm=algorithm)

    def __iter__(self) -> FFDPackDatasetIterator:
        return FFDPackDatasetIterator(self._parent.__iter__(), **self._kwargs)

    def __str__(self) -> str:
        return f"FFDPackIterDataset({self._kwargs})"
