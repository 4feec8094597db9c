"""Mantis-Eval (217 multi-image questions).

Layout (the original harness's download name): DIR/mantis/test.parquet (TIGER-Lab/Mantis-Eval
`mantis_eval/test-*.parquet`; columns id, question (with "<image>" markers), images (list of {bytes}), options
("(A) ..." strings), answer, question_type multi-choice|short-answer, category).
Reference prompt (`harnesses/mantis.py:47-58`): question + "\\n" + options with "(A)" -> "A." + "\\nAnswer with the
option's letter from the given choices directly.\\nAnswer:" (short answer: the short-answer instruction); images cycled
to the markers. Reference score (`mantis.py:343-353`): `answer in output` (case-sensitive; `output in answer` when
the answer is a list).
Chat prompt: the same message; a question without markers gets one "<image>\\n" per image in front.
Strict score: multiple choice by letter extraction (`choice.py`); short answers by equality after the official
VQA normalisation (`vqa_norm.py`).
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.evals import files, kit
from oq2vl_jax.evals.kit import IMAGE_MARKER, Item, Task, register
from oq2vl_jax.evals.scorers import choice
from oq2vl_jax.evals.scorers.vqa_norm import normalize_answer

_OPTION = re.compile(r"^\(([A-Z])\)\s*(.*)$", re.S)


@register
class Mantis(Task):
    name = "mantis"
    description = "Mantis-Eval (multi-image)"

    def load(self, data_dir):
        rows = files.read_parquet(os.path.join(data_dir, "mantis", "test.parquet"), self.name)
        items = []
        for row in rows:
            images = tuple(files.image_bytes(im, self.name, f"{row['id']} image {i}")
                           for i, im in enumerate(row.get("images") or []))
            options = [str(o) for o in (row.get("options") or [])]
            parsed = {}
            for j, o in enumerate(options):
                m = _OPTION.match(o.strip())
                parsed[m.group(1) if m else chr(65 + j)] = m.group(2) if m else o
            fields = {"question": str(row["question"]), "options": options, "parsed_options": parsed,
                      "answer": row["answer"], "mc": row["question_type"] == "multi-choice"}
            items.append(Item(str(row["id"]), images, fields, str(row.get("category") or row["question_type"])))
        return items

    def requests(self, item, style):
        f = item.fields
        text = f["question"]
        if f["mc"]:
            opts = "\n" + "\n".join(f["options"])
            for c in "ABCDE":
                opts = opts.replace(f"({c})", f"{c}.")
            text += opts + kit.LETTER_SUFFIX
        else:
            text += kit.VQA_SUFFIX
        if style == "reference":
            text += "\nAnswer:"
        elif IMAGE_MARKER not in text:
            text = f"{IMAGE_MARKER}\n" * len(item.images) + text
        return {"answer": kit.request(style, text, kit.fit_images(text, item.images))}

    def score(self, item, outputs, rng):
        f, out = item.fields, outputs["answer"]
        gold = f["answer"]
        if isinstance(gold, list):
            ref = out in gold
        else:
            ref = choice.reference_substring(str(gold), out, case_sensitive=True)
        if f["mc"]:
            pred = choice.extract_letter(out, f["parsed_options"])
            strict = pred == str(gold)
        else:
            pred = normalize_answer(out)
            golds = gold if isinstance(gold, list) else [gold]
            strict = any(pred == normalize_answer(str(g)) for g in golds)
        return {"strict": float(strict), "strict_pred": pred, "reference": float(ref), "answer": str(gold)}
