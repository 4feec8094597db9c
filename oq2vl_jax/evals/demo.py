"""The demo VQA task: the synthetic Q/A conversations about demo images (`oq2vl_jax/data/demo.py`).

Layout: DIR/sft/llava.json (LLaVA format: [{id, image, conversations: [{from: human, value: "<image>\\n..."},
{from: gpt, value}]}]) with the images under DIR/sft/ (what `write_demo_dataset` writes into WORKDIR/demo_data). One
item per record: its first question and answer. Category: the question template ("What colour is the shape?" ...).
Reference prompt: the harness's VQA prompt; reference score: `answer.lower() in output.lower()`.
Chat prompt: the human turn as in the SFT data ("<image>\\n{question}").
Strict score: equality after the official VQA normalisation (`vqa_norm.py`: "a circle" == "circle", "Yes." == "yes").
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.data.demo import QUESTIONS
from oq2vl_jax.evals import choice, files, prompts
from oq2vl_jax.evals.api import IMAGE_MARKER, Item
from oq2vl_jax.evals.task import Task
from oq2vl_jax.evals.vqa_norm import normalize_answer

_TEMPLATES = [(re.compile("^" + re.sub(r"\\\{\w+\\\}", ".+", re.escape(q)) + "$"), q) for q, _ in QUESTIONS]


def template_of(question: str) -> str:
    for pattern, q in _TEMPLATES:
        if pattern.match(question):
            return q
    return "other"


class DemoVQA(Task):
    name = "demo"
    description = "demo shapes VQA"

    def load(self, data_dir):
        root = os.path.join(data_dir, "sft")
        records = files.read_json(os.path.join(root, "llava.json"), self.name)
        items = []
        for rec in records:
            turns = rec.get("conversations") or []
            if len(turns) < 2 or not rec.get("image"):
                continue
            question = turns[0]["value"].replace(IMAGE_MARKER, "").strip()
            image = files.require(os.path.join(root, rec["image"]), self.name)
            items.append(Item(str(rec["id"]), (image,), {"question": question, "answer": turns[1]["value"]},
                              template_of(question)))
        return items

    def requests(self, item, style):
        q = item.fields["question"]
        text = prompts.reference_vqa(q) if style == "reference" else f"<image>\n{q}"
        return {"answer": prompts.request(style, text, item.images)}

    def score(self, item, outputs, rng):
        out, gold = outputs["answer"], item.fields["answer"]
        return {"strict": float(normalize_answer(out) == normalize_answer(gold)),
                "reference": float(choice.reference_substring(gold, out)), "answer": gold}
