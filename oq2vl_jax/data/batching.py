"""Packed rows -> the batch contract of oq2vl_jax/batch.py (numpy, one host's share).

Images are decoded and resized here, after packing, so the packing buffer holds encoded bytes only. A document whose
image turns out to be undecodable is dropped from its row and counted (its header was already checked before
packing, so this is rare: truncated files, broken pixel data).

Labels (`label_mode`):
  "default": targets[p] = input_ids[p+1] when p+1 is in the same document, else 0; loss_weights[p] = 1 iff p+1 is in
    the same document and is not an image position (and, for SFT documents, may be a target). So the last image
    position (predicting the "\\n") is trained, the `<s>` predicting the first image position is not, and neither is
    the last token of a document or padding.
  "reference_compat": the reference's training (docs/reference_notes.md §6): the whole row is one segment with
    positions 0..n-1 (attention crosses documents, no position reset), every text token after the first is a target,
    including the next document's `<s>`; image positions are not targets.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from oq2vl_jax.data.images import BadImage, decode_image
from oq2vl_jax.data.stats import empty_stats

LABEL_MODES = ("default", "reference_compat")


def compute_labels(input_ids: np.ndarray, segment_ids: np.ndarray, image_mask: np.ndarray,
                   target_ok: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Next-token targets and loss weights for [B, L] arrays (see module doc; segments define "same document")."""
    targets = np.zeros_like(input_ids)
    weights = np.zeros(input_ids.shape, np.float32)
    same = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, :-1] > 0)
    targets[:, :-1] = np.where(same, input_ids[:, 1:], 0)
    trained = same & ~image_mask[:, 1:]
    if target_ok is not None:
        trained &= target_ok[:, 1:]
    weights[:, :-1] = trained
    return targets, weights


class BatchAssembler:
    """`batch_fn` for grain's `.batch`: a list of packed rows -> one batch dict (+ "stats")."""

    def __init__(self, *, rows_per_batch: int, row_length: int, max_images_per_row: int, image_size: int,
                 tokens_per_image: int, label_mode: str = "default", resize_mode: str = "squash",
                 max_image_pixels: int = 0, jpeg_draft: bool = False):
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
        self.rows_per_batch, self.row_length, self.max_images = rows_per_batch, row_length, max_images_per_row
        self.image_size, self.tokens_per_image = image_size, tokens_per_image
        self.label_mode, self.resize_mode, self.max_image_pixels = label_mode, resize_mode, max_image_pixels
        self.jpeg_draft = jpeg_draft

    def _decode(self, document, stats: dict) -> list[np.ndarray] | None:
        decoded = []
        for data in document.images:
            try:
                array, repaired = decode_image(data, self.image_size, self.resize_mode, self.max_image_pixels,
                                             self.jpeg_draft)
            except BadImage as e:
                stats[e.reason] += 1
                return None
            stats["repaired_image_mode"] += int(repaired)
            decoded.append(array)
        return decoded

    def __call__(self, rows: Sequence[dict]) -> dict:
        b, length, m, s = self.rows_per_batch, self.row_length, self.max_images, self.image_size
        if len(rows) > b:
            raise ValueError(f"got {len(rows)} rows for a batch of {b}")
        input_ids = np.zeros((b, length), np.int32)
        segment_ids = np.zeros((b, length), np.int32)
        positions = np.zeros((b, length), np.int32)
        image_mask = np.zeros((b, length), np.bool_)
        target_ok = np.ones((b, length), np.bool_)
        images = np.zeros((b, m, s, s, 3), np.uint8)
        image_valid = np.zeros((b, m), np.bool_)
        stats = empty_stats()
        for r, row in enumerate(rows):
            for key, value in row["stats"].items():
                stats[key] += value
            pos, segment, slot = 0, 0, 0
            for document in row["documents"]:
                decoded = self._decode(document, stats)
                if decoded is None:
                    continue
                layout, n = document.layout, document.length
                segment += 1
                input_ids[r, pos:pos + n] = layout.ids
                image_mask[r, pos:pos + n] = layout.image_mask
                if layout.target_mask is not None:
                    target_ok[r, pos:pos + n] = layout.target_mask
                if self.label_mode == "default":
                    segment_ids[r, pos:pos + n] = segment
                    positions[r, pos:pos + n] = np.arange(n, dtype=np.int32)
                for array in decoded:
                    images[r, slot] = array
                    image_valid[r, slot] = True
                    slot += 1
                pos += n
                stats["documents"] += 1
                stats["num_images"] += len(decoded)
            if self.label_mode == "reference_compat" and pos:
                segment_ids[r, :pos] = 1
                positions[r, :pos] = np.arange(pos, dtype=np.int32)
            stats["real_tokens"] += pos
        stats["capacity_tokens"] += b * length
        targets, loss_weights = compute_labels(input_ids, segment_ids, image_mask, target_ok)
        return {"input_ids": input_ids, "segment_ids": segment_ids, "positions": positions,
                "image_mask": image_mask, "images": images, "image_valid": image_valid, "targets": targets,
                "loss_weights": loss_weights, "stats": stats}
