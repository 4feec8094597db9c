"""SigLIP image-text scores over WebDataset shards: one parquet per shard, resumable, data-parallel on all devices.

For every sample of every shard (tar order): decode + resize the image as SigLIP's processor does (bicubic squash to
the tower's image size, [-1, 1]), tokenize the caption with the model's tokenizer padded to the text length, and
compute `score = dot(l2norm(zimg), l2norm(ztxt)) * exp(logit_scale) + logit_bias` (sigmoid(score) is SigLIP's match
probability). Batches have one fixed size (the last one padded), so the step compiles once; the batch axis is
sharded over a 1-D mesh of every device and the parameters are replicated (the So400m pair is ~0.9B parameters).

Output `{out}/{shard without .tar}_{task}.parquet` with the row columns of curate/shards.py plus `score` (float32,
NaN where the image or caption is missing or unreadable), written atomically once a shard is done. A shard whose
table exists and matches the shard's size/mtime is skipped, so an interrupted run resumes at the next shard.
"""

from __future__ import annotations

import concurrent.futures
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from oq2vl_jax.curate import shards as shards_lib
from oq2vl_jax.data import images as images_lib
from oq2vl_jax.data.sources.selection import shard_fingerprint
from oq2vl_jax.errors import UserError
from oq2vl_jax.models import params as params_lib
from oq2vl_jax.models.presets import ModelOptions
from oq2vl_jax.models.siglip_text import SiglipPair
from oq2vl_jax.models.vlm import normalize_pixels
from oq2vl_jax.pretrained import siglip_pair

DEFAULT_TASK = "siglip"


class TextTokenizer:
    """Captions -> int32 [N, max_length] with the model's own tokenizer (HF `AutoTokenizer` from a local directory:
    SigLIP's SentencePiece model needs the `sentencepiece` package, a `tokenizer.json` does not)."""

    def __init__(self, directory: str, max_length: int):
        import transformers
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - transformers raises many kinds for a missing / unreadable tokenizer
            raise UserError(f"cannot load the text tokenizer from {directory!r} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); pass --tokenizer DIR (SigLIP's "
                            "spiece.model needs `pip install sentencepiece`)") from None
        if self.tok.pad_token_id is None:
            raise UserError(f"the tokenizer in {directory!r} has no pad token; SigLIP pads captions to full length")
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = self.tok(texts, padding="max_length", truncation=True, max_length=self.max_length)
        return np.asarray(out["input_ids"], np.int32)


class Scorer:
    """A jitted pair-score step over a 1-D data mesh, with host-side preprocessing of shard samples."""

    @classmethod
    def from_path(cls, model_path: str, *, tokenizer_dir: str | None = None, vision_heads: int | None = None,
                  **kwargs) -> "Scorer":
        config, tree, kind = siglip_pair.load_pair(model_path, vision_heads=vision_heads)
        default_tok = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
        scorer = cls(config, tree, TextTokenizer(tokenizer_dir or default_tok, config.text.max_length), **kwargs)
        scorer.kind = kind
        return scorer

    def __init__(self, config, tree, tokenizer, *, batch_size: int = 256, compute_dtype: str = "float32",
                 devices=None):
        self.config, self.kind, self.tokenizer = config, "in memory", tokenizer
        self.devices = list(devices or jax.devices())
        if batch_size % len(self.devices):
            raise UserError(f"--batch-size {batch_size} must be a multiple of the {len(self.devices)} devices")
        self.batch_size = batch_size
        self.mesh = Mesh(np.array(self.devices), ("data",))
        options = ModelOptions(compute_dtype=compute_dtype, attention="auto")
        if tree is None:  # random weights (benchmarks)
            model = SiglipPair(self.config, options, rngs=nnx.Rngs(0))
        else:
            model = params_lib.load_params(
                nnx.eval_shape(lambda: SiglipPair(self.config, options, rngs=nnx.Rngs(0))), tree)
        graphdef, state = nnx.split(model)
        replicated = NamedSharding(self.mesh, P())
        self.state = jax.device_put(state, replicated)
        self.batch_sharding = NamedSharding(self.mesh, P("data"))

        @jax.jit
        def score(state, pixels, token_ids):
            m = nnx.merge(graphdef, state)
            return m.pair_scores(normalize_pixels(pixels), token_ids).astype(jnp.float32)

        self._score = score
        self.image_size = self.config.vision.image_size

    def _pixels(self, sample: dict) -> np.ndarray | None:
        if sample["status"] != "success":
            return None
        try:
            return images_lib.decode_image(sample["image"], self.image_size)[0]
        except images_lib.BadImage:
            return None

    def _dispatch(self, pixels: np.ndarray, token_ids: np.ndarray):
        """Starts one step (asynchronously) on [n <= batch] pairs, padded to the batch size."""
        pad = self.batch_size - len(pixels)
        if pad:
            pixels = np.concatenate([pixels, np.zeros((pad,) + pixels.shape[1:], pixels.dtype)])
            token_ids = np.concatenate([token_ids, np.zeros((pad,) + token_ids.shape[1:], token_ids.dtype)])
        return self._score(self.state, jax.device_put(pixels, self.batch_sharding),
                           jax.device_put(token_ids, self.batch_sharding))

    def score_batch(self, pixels: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
        """uint8 [n <= batch, S, S, 3], int32 [n, L] -> float32 [n]."""
        return np.asarray(self._dispatch(pixels, token_ids))[:len(pixels)]

    def prepare(self, path: str, pool: concurrent.futures.Executor) -> tuple[list[dict], list]:
        """Host side of one shard: read the tar, decode + resize every image (in `pool`)."""
        samples = list(shards_lib.iter_samples(path))
        pixels = list(pool.map(self._pixels, samples))
        for s, p in zip(samples, pixels):
            s["image"] = s["members"] = None  # the bytes are no longer needed
            if p is None and s["status"] == "success":
                s["status"] = "image_corrupt"
        return samples, pixels

    def score_prepared(self, samples: list[dict], pixels: list) -> np.ndarray:
        """Device side: every batch is dispatched before any result is read, so steps queue back to back."""
        scores = np.full(len(samples), np.nan, np.float32)
        good = [i for i, p in enumerate(pixels) if p is not None]
        pending = []
        for k in range(0, len(good), self.batch_size):
            idx = good[k:k + self.batch_size]
            ids = self.tokenizer([samples[i]["caption"] for i in idx])
            pending.append((idx, self._dispatch(np.stack([pixels[i] for i in idx]), ids)))
        for idx, out in pending:
            scores[idx] = np.asarray(out)[:len(idx)]
        return scores

    def score_shard(self, path: str, pool: concurrent.futures.Executor) -> tuple[list[dict], np.ndarray]:
        samples, pixels = self.prepare(path, pool)
        return samples, self.score_prepared(samples, pixels)


def score_shards(model_path: str, shards_pattern: str, out_dir: str, *, task: str = DEFAULT_TASK,
                 tokenizer_dir: str | None = None, batch_size: int = 256, compute_dtype: str = "float32",
                 vision_heads: int | None = None, workers: int = 8) -> dict:
    if not os.path.exists(model_path):
        raise UserError(f"--model: SigLIP model '{model_path}' does not exist")
    root, shards = shards_lib.list_shards(shards_pattern)
    todo = [s for s in shards if not shards_lib.table_is_current(shards_lib.table_path(out_dir, s, task), root, s)]
    logging.info("curate score: %d shards, %d already scored, %d to do", len(shards), len(shards) - len(todo),
                 len(todo))
    counts = {"shards": len(shards), "skipped_current": len(shards) - len(todo), "scored_shards": 0, "samples": 0,
              "unscored": 0}
    if not todo:
        return counts
    scorer = Scorer.from_path(model_path, tokenizer_dir=tokenizer_dir, vision_heads=vision_heads,
                              batch_size=batch_size, compute_dtype=compute_dtype)
    start = time.time()
    # The next shard is read and decoded (prefetch thread + decode pool) while the current one is on the devices.
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool, \
            concurrent.futures.ThreadPoolExecutor(1) as prefetch:
        def prepare(shard: str):  # the fingerprint is taken before the bytes are read, so a change is never hidden
            return shard_fingerprint(root, shard), scorer.prepare(os.path.join(root, shard), pool)

        upcoming = prefetch.submit(prepare, todo[0])
        for n, shard in enumerate(todo):
            fingerprint, (samples, pixels) = upcoming.result()
            if n + 1 < len(todo):
                upcoming = prefetch.submit(prepare, todo[n + 1])
            scores = scorer.score_prepared(samples, pixels)
            columns = shards_lib.row_columns(samples)
            columns["score"] = scores
            shards_lib.write_table(shards_lib.table_path(out_dir, shard, task), columns, fingerprint,
                                   {"model": os.path.abspath(model_path), "kind": scorer.kind})
            counts["scored_shards"] += 1
            counts["samples"] += len(samples)
            counts["unscored"] += int(np.isnan(scores).sum())
            elapsed = time.time() - start
            rate = counts["samples"] / max(elapsed, 1e-9)
            logging.info("curate score: %d/%d shards, %d samples (%.1f samples/s, ETA %.0f s)", n + 1, len(todo),
                         counts["samples"], rate, elapsed / (n + 1) * (len(todo) - n - 1))
    return counts
