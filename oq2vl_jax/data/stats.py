"""Counting what the data pipeline skipped, repaired and packed.

Every batch carries `batch["stats"]`: a flat dict of python ints holding the *increments* since the previous batch
(so batches coming from several Grain workers sum correctly), with every key of `STATS_KEYS` present:

  - one count per `SKIP_REASONS` entry: records or documents that were not trained on, by reason;
  - one count per `REPAIR_REASONS` entry: records that were fixed and kept;
  - `documents`, `num_images`, `real_tokens` (document positions, image positions included) and `capacity_tokens`
    (rows x row_length) of the batch; `real_tokens / capacity_tokens` is the packing fill.

`DataStats` accumulates these over a run and logs a summary.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from absl import logging

SKIP_REASONS = (
    "shard_unreadable",    # a tar shard that is not a tar at all (empty, garbage, missing at read time)
    "shard_truncated",     # a tar shard cut short: the members after the cut are lost (counted once per cut)
    "shard_changed",       # a shard whose size or mtime changed after it was indexed: not read (the next run re-indexes)
    "duplicate_key",       # a second sample with a key already used in its shard (the first one is kept)
    "record_unreadable",   # I/O error, bad JSON / base64, or a record that cannot be parsed
    "image_missing",       # sample without an image member, or an image file that does not exist
    "caption_missing",     # sample without a caption member
    "caption_empty",       # empty or whitespace-only caption
    "image_corrupt",       # not an image, truncated or undecodable bytes
    "image_too_small",     # width or height below 2 pixels (the reference drops 1-pixel images)
    "image_too_large",     # more than max_image_pixels pixels (decompression-bomb guard)
    "too_many_images",     # a document with more images than max_images_per_row
    "overlong_dropped",    # a document longer than row_length with overlong="drop"
    "conversation_invalid",  # SFT: unknown role, non-text turn, no user -> assistant exchange, image count mismatch
)
REPAIR_REASONS = (
    "repaired_text_utf8",      # caption bytes that were not UTF-8: decoded with U+FFFD replacement
    "repaired_image_mode",     # image not in RGB mode (L, CMYK, P, LA, RGBA, I;16, ...): converted to RGB
    "truncated_overlong",      # a document longer than row_length cut to fit (never through an image block)
    "repaired_roles",          # SFT: turns of one role merged, a leading assistant / trailing user turn dropped
    "repaired_image_placeholder",  # SFT: <image> added (LLaVA convention) or removed (text-only record)
    "repaired_image_dropped",  # SFT: an unusable image; the conversation kept text-only (data.missing_image)
)
TOTAL_KEYS = ("documents", "num_images", "real_tokens", "capacity_tokens")
STATS_KEYS = SKIP_REASONS + REPAIR_REASONS + TOTAL_KEYS


def empty_stats() -> dict[str, int]:
    return {key: 0 for key in STATS_KEYS}


def add_counts(into: dict[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Adds `counts` into `into` (in place) and returns it; unknown keys are a programming error."""
    for key, value in counts.items():
        if key not in into:
            raise KeyError(f"unknown stats key {key!r}; known: {STATS_KEYS}")
        into[key] += int(value)
    return into


def sum_stats(parts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total = empty_stats()
    for part in parts:
        add_counts(total, part)
    return total


class DataStats:
    """Running totals of `batch["stats"]` over a run, with a one-line log summary."""

    def __init__(self):
        self.totals = empty_stats()
        self.batches = 0

    def update(self, batch_stats: Mapping[str, int]) -> None:
        add_counts(self.totals, batch_stats)
        self.batches += 1

    @property
    def skipped(self) -> int:
        return sum(self.totals[r] for r in SKIP_REASONS)

    @property
    def fill(self) -> float:
        capacity = self.totals["capacity_tokens"]
        return self.totals["real_tokens"] / capacity if capacity else 0.0

    def summary(self) -> dict[str, float | int]:
        out: dict[str, float | int] = {k: v for k, v in self.totals.items() if v or k in TOTAL_KEYS}
        out["batches"] = self.batches
        out["skipped"] = self.skipped
        out["fill"] = round(self.fill, 4)
        return out

    def log_summary(self, prefix: str = "data") -> str:
        reasons = ", ".join(f"{r}={self.totals[r]}" for r in SKIP_REASONS + REPAIR_REASONS if self.totals[r])
        line = (f"{prefix}: {self.batches} batches, {self.totals['documents']} documents, "
                f"{self.totals['num_images']} images, fill {self.fill:.2%}, skipped {self.skipped}"
                + (f" ({reasons})" if reasons else ""))
        logging.info(line)
        return line
