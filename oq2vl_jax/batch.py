"""The one batch contract shared by the data pipeline, the models and the trainer.

A batch is a dict of numpy (host) or jax (device) arrays. Each of its B rows packs several documents into L token
positions ("packed rows"). The data pipeline produces exactly these fields; `VLM.__call__` and the train step consume
them; nothing else defines them.

  input_ids     int32 [B, L]  token ids; 0 (any id) at padding and at image positions (those are overwritten by
                              image embeddings).
  segment_ids   int32 [B, L]  1-based document index within the row; 0 = padding. Attention is causal within a
                              document and never crosses documents (unless reference_compat).
  positions     int32 [B, L]  RoPE position, restarting at 0 for each document.
  image_mask    bool  [B, L]  True at the positions that receive image embeddings. The k-th valid image of a row
                              fills the k-th block of `tokens_per_image` marked positions of that row, in order.
  images        uint8 [B, M, H, W, 3]  M image slots per row, RGB, already resized (H = W = 384 for the real model).
                              Normalised on device as (x/255 - 0.5)/0.5.
  image_valid   bool  [B, M]  which slots hold a real image. Invalid slots are padding and are not computed when a
                              whole chunk of them is empty.
  targets       int32 [B, L]  (training only) the next token of the same document; 0 where there is none.
  loss_weights  float32 [B, L] (training only) 1.0 where `targets` is a real text token to predict; 0 on image
                              positions, padding and the last token of each document.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from oq2vl_jax.errors import UserError

# field -> (numpy dtype, rank)
MODEL_FIELDS = {
    "input_ids": (np.int32, 2),
    "segment_ids": (np.int32, 2),
    "positions": (np.int32, 2),
    "image_mask": (np.bool_, 2),
    "images": (np.uint8, 5),
    "image_valid": (np.bool_, 2),
}
LOSS_FIELDS = {
    "targets": (np.int32, 2),
    "loss_weights": (np.float32, 2),
}
PADDING_SEGMENT = 0


def validate_batch(batch: Mapping[str, np.ndarray], tokens_per_image: int, require_loss: bool = False) -> None:
    """Checks a host batch against the contract; raises UserError naming the field. Host-side only (numpy)."""
    fields = dict(MODEL_FIELDS)
    if require_loss:
        fields.update(LOSS_FIELDS)
    for name, (dtype, rank) in fields.items():
        if name not in batch:
            raise UserError(f"batch is missing field '{name}' (see oq2vl_jax/batch.py)")
        arr = np.asarray(batch[name])
        if arr.dtype != dtype or arr.ndim != rank:
            raise UserError(f"batch field '{name}' must be {np.dtype(dtype).name} rank {rank}, "
                            f"got {arr.dtype} shape {arr.shape}")
    b, l = np.shape(batch["input_ids"])
    for name in ("segment_ids", "positions", "image_mask") + (("targets", "loss_weights") if require_loss else ()):
        if np.shape(batch[name]) != (b, l):
            raise UserError(f"batch field '{name}' has shape {np.shape(batch[name])}, expected {(b, l)}")
    images, valid = np.asarray(batch["images"]), np.asarray(batch["image_valid"])
    if images.shape[:2] != valid.shape or images.shape[0] != b or images.shape[-1] != 3:
        raise UserError(f"images {images.shape} / image_valid {valid.shape} do not match batch size {b} "
                        "and [B, M, H, W, 3]")
    marked = np.asarray(batch["image_mask"]).sum(axis=1)
    expected = valid.sum(axis=1) * tokens_per_image
    if not np.array_equal(marked, expected):
        raise UserError(f"image_mask marks {marked.tolist()} positions per row but image_valid implies "
                        f"{expected.tolist()} (= valid images x tokens_per_image={tokens_per_image})")
