"""Synthetic packed rows shaped like real pre-training, for the step benchmark and the PyTorch peer.

Each document is `<s> [image x T_img] \\n caption <|im_end|>` with caption lengths like web alt-text (5-60 words with
a long tail, ~1.3 tokens a word); documents fill rows of `row_length` in order until the next one does not fit or the
row holds `images_per_row` images. With T_img = 144 and 4096-token rows that is ~25 images a row, as in the paper's
packed data. Token ids and pixels are random: only the shapes and the document structure matter here.
"""

from __future__ import annotations

import numpy as np

from oq2vl_jax.models.presets import VLMConfig

TOKENS_PER_WORD = 1.3


def caption_tokens(rng: np.random.Generator) -> int:
    words = int(np.clip(rng.lognormal(mean=np.log(12.0), sigma=0.6), 5, 200))
    return max(1, int(round(words * TOKENS_PER_WORD)))


def pretraining_rows(rows: int, *, config: VLMConfig, row_length: int = 4096, images_per_row: int = 25,
                     slots: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch per oq2vl_jax/batch.py (with targets and loss_weights). `slots` (M) defaults to images_per_row."""
    rng = np.random.default_rng(seed)
    t_img, size, vocab = config.tokens_per_image, config.vision.image_size, config.llm.vocab_size
    m = slots or images_per_row
    out = {k: np.zeros((rows, row_length), np.int32) for k in ("input_ids", "segment_ids", "positions", "targets")}
    out["image_mask"] = np.zeros((rows, row_length), np.bool_)
    out["loss_weights"] = np.zeros((rows, row_length), np.float32)
    out["images"] = rng.integers(0, 256, size=(rows, m, size, size, 3), dtype=np.uint8)
    out["image_valid"] = np.zeros((rows, m), np.bool_)
    for r in range(rows):
        start, doc = 0, 0
        while doc < images_per_row:
            n = 2 + t_img + caption_tokens(rng)
            if start + n > row_length:
                break
            doc += 1
            ids = rng.integers(0, vocab, n).astype(np.int32)
            image = np.zeros(n, np.bool_)
            image[1:1 + t_img] = True
            ids[image] = 0
            sl = slice(start, start + n)
            out["input_ids"][r, sl], out["segment_ids"][r, sl] = ids, doc
            out["positions"][r, sl], out["image_mask"][r, sl] = np.arange(n), image
            out["targets"][r, start:start + n - 1] = ids[1:]
            out["loss_weights"][r, start:start + n - 1] = ~image[1:]
            out["image_valid"][r, doc - 1] = True
            start += n
    return out
