"""The Grain pipeline from config: sources -> documents -> FFD-packed rows -> batches (oq2vl_jax/batch.py).

    MapDataset.source(each source) .shuffle(seed) .repeat        (global shuffle, reseeded every epoch)
      -> mix(weights)                                           (several sources)
      -> [process_index::process_count]                         (per-host shard: disjoint, covering)
      -> .map(DocumentBuilder)                                  (tokenize, check image headers, count skips)
      -> .to_iter_dataset(ReadOptions(read_threads))
      -> FFDPackIterDataset                                     (packing.py)
      -> .batch(rows_per_batch, BatchAssembler)                 (decode + resize images, labels; batching.py)
      -> .mp_prefetch(worker_count)                             (optional; each worker packs its own slice)

`build_iterator(...)` returns a grain DatasetIterator: `next(it)` is a batch dict, `it.get_state()` /
`it.set_state(state)` save and restore it exactly (the state is JSON-serialisable).

Epochs: with one source an epoch is one pass over it. With several, each source repeats forever in its own
reshuffled order and the mixture is cut after num_epochs x (sum of source sizes) records, so an "epoch" is a
record count; it visits every record exactly once only when the weights are proportional to the source sizes.
"""

from __future__ import annotations

from typing import Any, Mapping

import grain
import ml_collections
import numpy as np

from oq2vl_jax.data import images as images_lib
from oq2vl_jax.data.batching import LABEL_MODES, BatchAssembler
from oq2vl_jax.data.config import default_data_config  # noqa: F401  (re-exported)
from oq2vl_jax.data.images import BadImage, probe_image
from oq2vl_jax.data.packing import PACKING_ALGORITHMS, FFDPackIterDataset, PackedDocument
from oq2vl_jax.data.sources.conversations import ConversationFormatter, MISSING_IMAGE_POLICIES
from oq2vl_jax.data.sources.registry import open_source
from oq2vl_jax.data.stats import SKIP_REASONS, STATS_KEYS, DataStats  # noqa: F401  (re-exported)
from oq2vl_jax.errors import UserError
from oq2vl_jax.text.chat import CHAT_FORMATS
from oq2vl_jax.text.documents import TextEncoder, caption_document, interleaved_document, truncate_document
from oq2vl_jax.text.tokens import load_tokenizer

OVERLONG_POLICIES = ("truncate", "drop")
SPLITS = ("train", "eval")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def resolve_config(data_cfg: Any) -> dict:
    """Defaults + data_cfg, checked; returns a plain dict. Raises UserError naming the field."""
    cfg = default_data_config().to_dict()
    given = data_cfg.to_dict() if isinstance(data_cfg, ml_collections.ConfigDict) else dict(data_cfg or {})
    unknown = sorted(set(given) - set(cfg))
    if unknown:
        raise UserError(f"data: unknown field(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(given)
    ints = {"image_size": 2, "row_length": 8, "max_images_per_row": 0, "pack_buffer": 1, "worker_count": 0,
            "worker_buffer_size": 1, "read_threads": 1, "max_image_pixels": 0}
    for name, low in ints.items():
        value = cfg[name]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise UserError(f"data.{name} must be an integer >= {low}, got {value!r}")
    choices = {"resize_mode": images_lib.RESIZE_MODES, "overlong": OVERLONG_POLICIES, "label_mode": LABEL_MODES,
               "packing": PACKING_ALGORITHMS, "chat_format": CHAT_FORMATS, "missing_image": MISSING_IMAGE_POLICIES}
    for name, options in choices.items():
        if cfg[name] not in options:
            raise UserError(f"data.{name} must be one of {options}, got {cfg[name]!r}")
    if not isinstance(cfg["num_epochs"], int) or not (cfg["num_epochs"] == -1 or cfg["num_epochs"] >= 1):
        raise UserError(f"data.num_epochs must be -1 (forever) or >= 1, got {cfg['num_epochs']!r}")
    for name in ("sources", "eval_sources"):
        specs = cfg[name]
        if not isinstance(specs, (list, tuple)):
            raise UserError(f"data.{name} must be a list of {{kind, path, weight}} entries")
        cfg[name] = [dict(s) for s in specs]
        for i, spec in enumerate(cfg[name]):
            weight = spec.setdefault("weight", 1.0)
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise UserError(f"data.{name}[{i}].weight must be a positive number, got {weight!r}")
    return cfg


class DocumentBuilder:
    """Record -> {"documents": [PackedDocument], "stats": counts}: tokenize, check image headers, count skips."""

    def __init__(self, encoder: TextEncoder, *, tokens_per_image: int, row_length: int, max_images_per_row: int,
                 overlong: str, max_image_pixels: int, chat_format: str = "open_qwen2vl",
                 missing_image: str = "text_only", reference_compat: bool = False):
        self.encoder, self.tokens_per_image, self.row_length = encoder, tokens_per_image, row_length
        self.max_images, self.overlong, self.max_image_pixels = max_images_per_row, overlong, max_image_pixels
        self.conversations = ConversationFormatter(encoder, chat_format=chat_format, tokens_per_image=tokens_per_image,
                                                   max_image_pixels=max_image_pixels, missing_image=missing_image,
                                                   reference_compat=reference_compat)

    def _finish(self, layout, images: list[bytes], doc_id: tuple, stats: dict) -> PackedDocument | None:
        if layout.num_images > self.max_images:
            stats["too_many_images"] = stats.get("too_many_images", 0) + 1
            return None
        if layout.length > self.row_length:
            if self.overlong == "drop":
                stats["overlong_dropped"] = stats.get("overlong_dropped", 0) + 1
                return None
            layout = truncate_document(layout, self.row_length, self.tokens_per_image)
            if layout.target_mask is not None and not layout.target_mask[1:].any():  # SFT: no answer token left
                stats["conversation_invalid"] = stats.get("conversation_invalid", 0) + 1
                return None
            stats["truncated_overlong"] = stats.get("truncated_overlong", 0) + 1
        return PackedDocument(layout, tuple(images[:layout.num_images]), doc_id)

    def _caption_documents(self, record: dict, stats: dict) -> list[PackedDocument]:
        out = []
        for j, doc in enumerate(record["documents"]):
            parts = [(k, v) for k, v in doc["parts"] if k == "image" or str(v).strip()]
            if not any(k == "text" for k, _ in parts):
                stats["caption_empty"] = stats.get("caption_empty", 0) + 1
                continue
            images = [v for k, v in parts if k == "image"]
            if not self._images_readable(images, stats):
                continue
            if [k for k, _ in parts] == ["image", "text"]:
                layout = caption_document(self.encoder, parts[1][1], self.tokens_per_image)
            else:
                layout = interleaved_document(self.encoder, parts, self.tokens_per_image)
            packed = self._finish(layout, images, (record["source"], record["index"], j), stats)
            if packed is not None:
                out.append(packed)
        return out

    def _images_readable(self, images, stats: dict) -> bool:
        """Header check of every image of a document; a bad one skips the document, counted by reason."""
        try:
            for data in images:
                probe_image(data, self.max_image_pixels)
        except BadImage as e:
            stats[e.reason] = stats.get(e.reason, 0) + 1
            return False
        return True

    def __call__(self, record: dict) -> dict:
        stats = dict(record.get("skips", {}))
        for key, value in record.get("repairs", {}).items():
            stats[key] = stats.get(key, 0) + value
        if "conversations" not in record:
            return {"documents": self._caption_documents(record, stats), "stats": stats}
        if record.get("skips"):
            return {"documents": [], "stats": stats}
        documents = []
        formatted, counts = self.conversations(record)  # chat formatting (data/sources/conversations.py, text/chat.py)
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
        for j, (layout, images) in enumerate(formatted):
            packed = self._finish(layout, list(images), (record["source"], record["index"], j), stats)
            if packed is not None:
                documents.append(packed)
        return {"documents": documents, "stats": stats}


def _mixed_records(sources: list, weights: list[float], seed: int, shuffle: bool, num_epochs: int):
    datasets = []
    for i, source in enumerate(sources):
        ds = grain.MapDataset.source(source)
        if shuffle:
            ds = ds.shuffle(seed=seed + 7919 * i)
        datasets.append(ds)
    if len(datasets) == 1:
        return datasets[0].repeat(None if num_epochs < 0 else num_epochs)
    mixed = grain.MapDataset.mix([d.repeat(None) for d in datasets], weights)
    return mixed if num_epochs < 0 else mixed[: num_epochs * sum(len(s) for s in sources)]


def auto_max_images(row_length: int, tokens_per_image: int) -> int:
    # the shortest caption document is <s> + image + "\n" + one token + <|im_end|>
    return max(1, row_length // (tokens_per_image + 3))


def build_dataset(data_cfg: Any, *, tokens_per_image: int, rows_per_batch: int, seed: int,
                  process_index: int | None = None, process_count: int | None = None,
                  split: str = "train") -> grain.IterDataset:
    """The pipeline as a grain IterDataset of batches (see build_iterator)."""
    cfg = resolve_config(data_cfg)
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(rows_per_batch, int) or rows_per_batch < 1:
        raise UserError(f"rows_per_batch must be a positive integer, got {rows_per_batch!r}")
    if not isinstance(tokens_per_image, int) or tokens_per_image < 1 or tokens_per_image + 3 > cfg["row_length"]:
        raise UserError(f"tokens_per_image must be in [1, data.row_length - 3], got {tokens_per_image!r}")
    if process_index is None or process_count is None:
        import jax  # only for the default per-host shard
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index {process_index} must be in [0, process_count={process_count})")
    field = "sources" if split == "train" else "eval_sources"
    specs = cfg[field]
    if not specs:
        raise UserError(f"data.{field} is empty: give at least one {{kind, path, weight}} entry")
    sources = [open_source(spec, f"data.{field}[{i}]") for i, spec in enumerate(specs)]
    max_images = cfg["max_images_per_row"] or auto_max_images(cfg["row_length"], tokens_per_image)
    encoder = TextEncoder.from_tokenizer(load_tokenizer(cfg["tokenizer_dir"], cfg["row_length"]))
    train = split == "train"
    records = _mixed_records(sources, [float(s["weight"]) for s in specs], seed, cfg["shuffle"] and train,
                             cfg["num_epochs"] if train else 1)
    if process_count > 1:
        records = records[process_index::process_count]
    builder = DocumentBuilder(encoder, tokens_per_image=tokens_per_image, row_length=cfg["row_length"],
                              max_images_per_row=max_images, overlong=cfg["overlong"],
                              max_image_pixels=cfg["max_image_pixels"], chat_format=cfg["chat_format"],
                              missing_image=cfg["missing_image"],
                              reference_compat=cfg["label_mode"] == "reference_compat")
    ds = records.map(builder).to_iter_dataset(
        grain.ReadOptions(num_threads=cfg["read_threads"], prefetch_buffer_size=max(16, 4 * cfg["read_threads"])))
    ds = FFDPackIterDataset(ds, row_length=cfg["row_length"], max_images_per_row=max_images,
                            buffer_size=cfg["pack_buffer"], seed=seed, shuffle_rows=cfg["shuffle_rows"] and train,
                            algorithm=cfg["packing"])
    assembler = BatchAssembler(rows_per_batch=rows_per_batch, row_length=cfg["row_length"],
                               max_images_per_row=max_images, image_size=cfg["image_size"],
                               tokens_per_image=tokens_per_image, label_mode=cfg["label_mode"],
                               resize_mode=cfg["resize_mode"], max_image_pixels=cfg["max_image_pixels"],
                               jpeg_draft=bool(cfg["jpeg_draft"]))
    ds = ds.batch(rows_per_batch, batch_fn=assembler)
    if cfg["worker_count"] > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():  # grain's mp_prefetch reads its absl flags; outside an absl app: defaults
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg["worker_count"],
                                                         per_worker_buffer_size=cfg["worker_buffer_size"]))
    return ds


def build_iterator(data_cfg: Any, *, tokens_per_image: int, rows_per_batch: int, seed: int,
                   process_index: int | None = None, process_count: int | None = None,
                   split: str = "train") -> grain.DatasetIterator:
    """The trainer's entry point: an iterator of host batches (numpy, B = rows_per_batch) with get/set_state.

    Each batch has the fields of oq2vl_jax/batch.py (targets and loss_weights included) plus "stats" (see
    stats.py). split="eval" reads data.eval_sources once, in order (no shuffle, one epoch).
    """
    ds = build_dataset(data_cfg, tokens_per_image=tokens_per_image, rows_per_batch=rows_per_batch, seed=seed,
                       process_index=process_index, process_count=process_count, split=split)
    return ds.__iter__()


def model_vocab_size(data_cfg: Any) -> int:
    """len(tokenizer) after the added tokens: the smallest embedding table that covers every id the data emits."""
    return TextEncoder.from_tokenizer(load_tokenizer(resolve_config(data_cfg)["tokenizer_dir"])).vocab_size


__all__ = ["default_data_config", "resolve_config", "build_dataset", "build_iterator", "DocumentBuilder",
           "DataStats", "SKIP_REASONS", "STATS_KEYS", "model_vocab_size"]
