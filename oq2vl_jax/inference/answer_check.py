"""Is a model asked as it was taught? Its teacher-forced answers on SFT records against its greedy answers to the same
questions asked through inference.

When the generation prompt is token for token the training document up to the answer (docs/inference.md), every
answer the model gets right under teacher forcing (the argmax of each answer token and of `<|im_end|>`, the gold
prefix given) is also what greedy decoding generates, so greedy accuracy >= teacher-forced accuracy item by item.
An item right under teacher forcing and wrong when asked means the prompts differ.

Records are LLaVA JSON single-image conversations (`{"image": FILE, "conversations": [human, gpt, ...]}`); the
question asked is the last user turn without its `<image>` placeholder, with the image given apart (what
`generate --image X --prompt Q` sends), and earlier turns as messages.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from oq2vl_jax.inference.prompts import Prompt, load_image
from oq2vl_jax.text import chat
from oq2vl_jax.text.tokens import IMAGE_TOKEN

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def gold_answer(record: dict) -> str:
    return record["conversations"][-1]["value"].strip()


def request(record: dict, image_root: str) -> dict:
    """The record's last question as a user would send it: the image apart, the placeholder removed."""
    turns = [{"role": ROLES[t["from"]], "content": t["value"]} for t in record["conversations"][:-1]]
    turns = [{**t, "content": t["content"].replace(IMAGE_TOKEN, "").strip()} for t in turns]
    images = [os.path.join(image_root, record["image"])] if record.get("image") else []
    if len(turns) == 1:
        return {"text": turns[0]["content"], "images": images}
    return {"messages": turns, "images": images}


def teacher_forced(vlm, records: Sequence[dict], image_root: str, batch_size: int = 16) -> list[bool]:
    """Per record: is every token of its last answer (and `<|im_end|>`) the argmax, the gold prefix given?"""
    contract, t_img = vlm.contract, vlm.config.tokens_per_image
    size = vlm.config.vision.image_size
    docs, spans = [], []
    for record in records:
        images = [record["image"]] if record.get("image") else []
        layout = chat.conversation_document(record["conversations"], contract.chat_format, vlm.encoder, t_img,
                                            num_images=len(images),
                                            reference_compat=contract.reference_compat).layout
        mask = layout.target_mask
        starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
        start = int(starts[-1])
        end = start + int(np.argmax(~mask[start:])) if not mask[start:].all() else layout.length
        pixels = tuple(load_image(os.path.join(image_root, name), size) for name in images)
        docs.append(Prompt(layout._replace(target_mask=None), pixels))
        spans.append((start, end - 1))  # the answer's tokens and <|im_end|>, not the "\n" after it
    right = []
    for first in range(0, len(docs), batch_size):
        part = docs[first:first + batch_size]
        predicted = vlm.teacher_forced_argmax(part)
        for r, (doc, (a, b)) in enumerate(zip(part, spans[first:first + batch_size])):
            right.append(bool(np.all(predicted[r, a - 1:b - 1] == doc.document.ids[a:b])))
    return right

