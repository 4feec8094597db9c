"""MMStar (val, 1,500 questions).

Layout: DIR/mmstar/test.parquet (Lin-Chen/MMStar `mmstar.parquet`, named as the original harness downloads it;
columns index, question (options inside it, "Options: A: ..., B: ..."), image (raw bytes or {bytes}), answer
(letter), category, l2_category).
Reference prompt (`harnesses/mmstar.py:173`): "<image>\\nQuestion: {question}\\nAnswer with the option's letter from
the given choices directly.\\nAnswer:"; reference score `answer in output` (case-sensitive, `mmstar.py:311-314`).
Chat prompt: "<image>\\n{question}" + the letter instruction. Strict score: letter extraction over A-D with the option
texts parsed from the question.
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import IMAGE_MARKER, Item, MultipleChoiceTask, register

_OPTION = re.compile(r"(?:^|[\s,])([A-D])[:.]\s*(.*?)(?=(?:,\s*|\s+)[A-D][:.]\s|$)", re.S)


def options_in_question(question: str) -> dict[str, str]:
    """"Options: A: x, B: y" -> {"A": "x", "B": "y"} (the text after "Options:"; letters alone if unparsable)."""
    tail = question.split("Options:", 1)[1] if "Options:" in question else ""
    found = {m.group(1): m.group(2).strip().rstrip(",").strip() for m in _OPTION.finditer(tail)}
    return found or {c: c for c in "ABCD"}


@register
class MMStar(MultipleChoiceTask):
    name, description = "mmstar", "MMStar val"
    reference_case_sensitive = True

    def load(self, data_dir):
        rows = files.read_parquet(os.path.join(data_dir, "mmstar", "test.parquet"), self.name)
        items = []
        for n, row in enumerate(rows):
            image = files.image_bytes(row.get("image"), self.name, f"row {n}")
            fields = {"question": str(row["question"]), "answer": str(row["answer"]).strip(),
                      "options": options_in_question(str(row["question"]))}
            items.append(Item(str(row.get("index", n)), (image,), fields, str(row.get("category") or "")))
        return items

    def question_text(self, item, style):  # the options are inside the question
        prefix = "Question: " if style == "reference" else ""
        return f"{IMAGE_MARKER}\n{prefix}{item.fields['question']}"
