"""Teacher-forced answer accuracy on held-out SFT conversations, with the real images and with blank images.

Each held-out conversation (LLaVA JSON, formatted with the training chat format) is one row. Every assistant answer
(a run of the loss mask: the answer, `<|im_end|>`, "\\n") counts as right when the argmax prediction of each of its
tokens up to and including `<|im_end|>` equals the answer's token, earlier turns given (teacher forcing). Reported per
answer kind (the record's "answer_kinds", e.g. colour / shape / position / describe / text), once with the images,
once with all-zero images, beside the best image-blind rate: the most frequent training answer to the same question.
A model that uses the images beats both blind numbers on the image questions.
"""

from __future__ import annotations

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from oq2vl_jax.data.images import decode_image
from oq2vl_jax.text import chat
from oq2vl_jax.text.documents import TextEncoder
from oq2vl_jax.text.tokens import load_tokenizer


def answer_spans(target_mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True in the loss mask (one per assistant answer)."""
    padded = np.concatenate([[False], target_mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _questions_and_answers(record: dict) -> list[tuple[str, str]]:
    turns = record["conversations"]
    return [(turns[i]["value"].replace("<image>", "").strip(), turns[i + 1]["value"].strip())
            for i in range(0, len(turns) - 1, 2)]


def blind_baseline(train_json: str, eval_records: list[dict]) -> dict[str, float]:
    """Per answer kind: accuracy of always giving the most frequent training answer to the same question."""
    with open(train_json) as f:
        train = json.load(f)
    answers: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for record in train:
        for question, answer in _questions_and_answers(record):
            answers[question][answer] += 1
    hits: dict[str, list[bool]] = collections.defaultdict(list)
    for record in eval_records:
        for kind, (question, answer) in zip(record["answer_kinds"], _questions_and_answers(record)):
            best = answers[question].most_common(1)[0][0] if answers[question] else None
            hits[kind].append(best == answer)
    return {k: float(np.mean(v)) for k, v in sorted(hits.items())}


def answer_accuracy(result, eval_json: str, image_root: str, tokenizer_dir: str, *, chat_format: str,
                    row_length: int, image_size: int, train_json: str | None = None, batch_rows: int = 32) -> dict:
    """{"with_images": {kind: acc}, "blank_images": {...}, "image_blind_best": {...}, "answers": {kind: n}}."""
    encoder = TextEncoder.from_tokenizer(load_tokenizer(tokenizer_dir, row_length))
    with open(eval_json) as f:
        records = json.load(f)
    t_img = result.model_config.tokens_per_image
    rows, kinds, spans, pixels, has_image = [], [], [], [], []
    for record in records:
        images = [record["image"]] if record.get("image") else []
        doc = chat.conversation_document(record["conversations"], chat_format, encoder, t_img,
                                         num_images=len(images)).layout
        if doc is None or doc.length > row_length:
            continue
        rows.append(doc)
        kinds.append(record["answer_kinds"])
        spans.append(answer_spans(doc.target_mask))
        if images:
            with open(os.path.join(image_root, images[0]), "rb") as f:
                pixels.append(decode_image(f.read(), image_size)[0])
        else:
            pixels.append(np.zeros((image_size, image_size, 3), np.uint8))
        has_image.append(bool(images))
    n = len(rows)
    ids = np.zeros((n, row_length), np.int32)
    seg, pos, image_mask = np.zeros_like(ids), np.zeros_like(ids), np.zeros((n, row_length), np.bool_)
    for r, doc in enumerate(rows):
        ids[r, :doc.length], seg[r, :doc.length], pos[r, :doc.length] = doc.ids, 1, np.arange(doc.length)
        image_mask[r, :doc.length] = doc.image_mask
    pixel_array = np.stack(pixels)[:, None]
    valid = np.asarray(has_image)[:, None]
    params = jax.device_get(dict(result.state.trainable) | dict(result.state.frozen))
    argmax = jax.jit(lambda p, batch: jnp.argmax(result.parts.model(p)(batch), axis=-1))

    def predict(imgs: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, n, batch_rows):
            sl = slice(start, start + batch_rows)
            batch = {"input_ids": ids[sl], "segment_ids": seg[sl], "positions": pos[sl], "image_mask": image_mask[sl],
                     "images": imgs[sl], "image_valid": valid[sl]}
            pad = batch_rows - batch["input_ids"].shape[0]
            if pad:
                batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
            out.append(np.asarray(argmax(params, batch))[:batch_rows - pad])
        return np.concatenate(out)

    scores: dict = {}
    for condition, imgs in (("with_images", pixel_array), ("blank_images", np.zeros_like(pixel_array))):
        predicted = predict(imgs)
        hits: dict[str, list[bool]] = collections.defaultdict(list)
        for r in range(n):
            for kind, (a, b) in zip(kinds[r], spans[r]):
                # the answer's tokens and <|im_end|> (the trailing "\n" is not part of the answer)
                hits[kind].append(bool(np.all(predicted[r, a - 1:b - 2] == ids[r, a:b - 1])))
        scores[condition] = {k: float(np.mean(v)) for k, v in sorted(hits.items())}
        scores["answers"] = {k: len(v) for k, v in sorted(hits.items())}
    if train_json:
        scores["image_blind_best"] = blind_baseline(train_json, [r for r in records])
    return scores


def report_sft_demo(result, config, paths: dict, workdir: str) -> dict:
    """The SFT demo's held-out score (configs/demo_sft.py): printed per condition and written to
    WORKDIR/answer_scores.json."""
    scores = answer_accuracy(result, paths["eval"], paths["image_root"], config.data.tokenizer_dir,
                             chat_format=config.data.chat_format, row_length=int(config.data.row_length),
                             image_size=int(config.data.image_size), train_json=paths["train"])
    for condition in ("with_images", "blank_images", "image_blind_best"):
        values = scores.get(condition, {})
        print(f"held-out answers, {condition.replace('_', ' ')}: "
              + ", ".join(f"{k} {100 * v:.1f}%" for k, v in values.items()))
    from oq2vl_jax.storage import paths as storage
    storage.write_text(storage.join(workdir, "answer_scores.json"), json.dumps(scores, indent=2))
    return scores
