"""The demo VQA task: the synthetic Q/A conversations about demo images (`oq2vl_jax/demo/shapes.py`).

Layout: DIR/sft/llava.json (LLaVA format: [{id, image, conversations: [{from: human, value: "<image>\\n..."},
{from: gpt, value}]}]) with the images under DIR/sft/ (what `write_demo_dataset` writes into WORKDIR/demo_data). One
item per record: its first question and answer. Category: the question template ("What colour is the shape?" ...).
Reference prompt: the harness's VQA prompt; reference score: `answer.lower() in output.lower()`.
Chat prompt: the human turn as in the SFT data ("<image>\\n{question}").
Strict score: equality after the official VQA normalisation (`vqa_norm.py`: "a circle" == "circle", "Yes." == "yes").

`--data` may also be the SFT demo's directory (WORKDIR/sft_data of configs/demo_sft.py, `oq2vl_jax/demo/sft.py`):
its held-out `eval.json` (images relative to that directory) is then the item set, categorised by answer kind
(colour, shape, position, describe), so the demo's pre-train -> SFT recipe ends with this table.
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.demo.shapes import QUESTIONS
from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import IMAGE_MARKER, Item, ShortAnswerTask, register

SFT_DEMO_EVAL = "eval.json"  # the held-out split of demo/sft.py
_TEMPLATES = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(q)) + "$"), q) for q, _ in QUESTIONS]


def template_of(question: str) -> str:
    for pattern, q in _TEMPLATES:
        if pattern.match(question):
            return q
    return "other"


@register
class DemoVQA(ShortAnswerTask):
    name, description = "demo", "demo shapes VQA"

    def load(self, data_dir):
        sft_demo_eval = os.path.join(data_dir, SFT_DEMO_EVAL)
        if os.path.isfile(sft_demo_eval) and not os.path.isfile(os.path.join(data_dir, "sft", "llava.json")):
            root, records = data_dir, files.read_json(sft_demo_eval, self.name)
        else:
            root = os.path.join(data_dir, "sft")
            records = files.read_json(os.path.join(root, "llava.json"), self.name)
        items = []
        for rec in records:
            turns = rec.get("conversations") or []
            if len(turns) < 2 or not rec.get("image"):
                continue
            question = turns[0]["value"].replace(IMAGE_MARKER, "").strip()
            image = files.require(os.path.join(root, rec["image"]), self.name)
            category = (rec.get("answer_kinds") or [None])[0] or template_of(question)
            items.append(Item(str(rec["id"]), (image,), {"question": question, "answer": turns[1]["value"]},
                              category))
        return items
