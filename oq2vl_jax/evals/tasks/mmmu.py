"""MMMU validation (900 questions).

Layout (the original harness's download name): DIR/mmmu/val.parquet (lmms-lab/MMMU `data/validation-*.parquet`;
columns id, question, options (a Python list literal), answer, question_type multiple-choice|open, subfield,
image_1..image_7).
Reference prompt (`harnesses/mmmu.py:47-63`): "The following are multiple choice questions about{ subfield
words}.\\n\\n" + question + ("\\nA. ..." + "\\nAnswer with the option's letter from the given choices
directly.\\nAnswer:" for multiple choice, "\\nAnswer the question using a single word or phrase.\\nAnswer:" for open),
every "<image N>" -> "<image>\\n"; images 1-5, cycled when the prompt refers to more (`mmmu.py:178-208`).
Chat prompt: the question (markers replaced the same way), options, and the letter / short-answer instruction.
Reference score: the harness's copy of MMMU's parsing (`mmmu_parse.py`, variant "harness"); strict score: the MMMU
repository's parsing (variant "official"); both seed the random guess per item. Category: the subject (from the id).
"""

from __future__ import annotations

import ast
import os
import random
import re

from oq2vl_jax.evals import files, kit
from oq2vl_jax.evals.kit import Item, Task, register
from oq2vl_jax.evals.scorers import mmmu_parse

_MARKER = re.compile(r"<image\s*\d+>")
REFERENCE_IMAGES = 5


def literal_list(value) -> list:
    if isinstance(value, list):
        return value
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        return []
    return list(parsed) if isinstance(parsed, (list, tuple)) else []


@register
class MMMU(Task):
    name = "mmmu"
    description = "MMMU val"

    def load(self, data_dir):
        rows = files.read_parquet(os.path.join(data_dir, "mmmu", "val.parquet"), self.name)
        items = []
        for row in rows:
            images = tuple(files.image_bytes(row[k], self.name, f"{row['id']} {k}")
                           for k in (f"image_{i}" for i in range(1, REFERENCE_IMAGES + 1)) if row.get(k))
            options = [str(o) for o in literal_list(row.get("options"))]
            fields = {"question": str(row["question"]), "options": options, "answer": row["answer"],
                      "mc": row["question_type"] == "multiple-choice", "subfield": str(row.get("subfield", ""))}
            subject = "_".join(str(row["id"]).split("_")[1:-1])
            items.append(Item(str(row["id"]), images, fields, subject))
        return items

    def requests(self, item, style):
        f = item.fields
        body = f["question"]
        if f["mc"]:
            body += "".join(f"\n{chr(65 + j)}. {o}" for j, o in enumerate(f["options"])) + kit.LETTER_SUFFIX
        else:
            body += kit.VQA_SUFFIX
        if style == "reference":
            subject = "".join(" " + w for w in f["subfield"].split("_"))
            body = f"The following are multiple choice questions about {subject}.\n\n{body}\nAnswer:"
        body = _MARKER.sub("<image>\n", body)
        return {"answer": kit.request(style, body, kit.fit_images(body, item.images))}

    def score(self, item, outputs, rng):
        f, out = item.fields, outputs["answer"]
        if f["mc"]:
            letters = [chr(65 + j) for j in range(len(f["options"]))]
            options = dict(zip(letters, f["options"]))
            seed = rng.random()  # one draw per item; each scorer gets its own copy of the stream
            strict_pred = mmmu_parse.parse_choice(out, letters, options, random.Random(seed), "official")
            ref_pred = mmmu_parse.parse_choice(out, letters, options, random.Random(seed), "harness")
            gold = str(f["answer"])
            return {"strict": float(strict_pred == gold), "strict_pred": strict_pred,
                    "reference": float(ref_pred == gold), "reference_pred": ref_pred, "answer": gold}
        gold = f["answer"]
        strict_gold = literal_list(gold) if str(gold).startswith("[") else gold
        preds = mmmu_parse.parse_open(out)
        return {"strict": float(mmmu_parse.eval_open(strict_gold or gold, preds)),
                "reference": float(mmmu_parse.eval_open(gold, preds)), "answer": str(gold)}
