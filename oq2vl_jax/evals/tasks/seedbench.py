"""SEED-Bench, image subset (14,233 questions with data_type "image" in the original harness).

Layout: DIR/seedbench/test.json (AILab-CVC/SEED-Bench `SEED-Bench.json`, named as the original harness downloads it;
{"questions": [{question_id, question, choice_a..d, answer, data_id, data_type, question_type_id}], "question_type":
{name: id}}) and the images DIR/seedbench/images/{data_id} (the unzipped SEED-Bench-image.zip).
Reference prompt (`harnesses/seedbench.py:47-55`): "<image>\\n{question}\\nA. {choice_a}...\\nD. {choice_d}\\nAnswer
with the option's letter from the given choices directly.\\nAnswer:"; reference score `answer.lower() in
output.lower()`.
Chat prompt: the same question and options with the letter instruction, in the chat template.
Strict score: letter extraction (`choice.py`). Category: the question type name.
"""

from __future__ import annotations

import os

from oq2vl_jax.evals import files, prompt_styles as prompts
from oq2vl_jax.evals.kit import Item, Task
from oq2vl_jax.evals.scorers import choice

KEYS = {"A": "choice_a", "B": "choice_b", "C": "choice_c", "D": "choice_d"}


class SEEDBench(Task):
    name = "seedbench"
    description = "SEED-Bench image"

    def load(self, data_dir):
        root = os.path.join(data_dir, "seedbench")
        blob = files.read_json(os.path.join(root, "test.json"), self.name)
        type_names = {v: k for k, v in blob.get("question_type", {}).items()}
        image_dir = files.require(os.path.join(root, "images"), self.name)
        items = []
        for q in blob["questions"]:
            if q.get("data_type") != "image":
                continue
            path = files.require(os.path.join(image_dir, q["data_id"]), self.name)
            options = {c: str(q[k]) for c, k in KEYS.items()}
            fields = {"question": q["question"], "options": options, "answer": q["answer"]}
            items.append(Item(str(q["question_id"]), (path,), fields,
                              type_names.get(q.get("question_type_id"), str(q.get("question_type_id", "")))))
        return items

    def requests(self, item, style):
        f = item.fields
        text = f"<image>\n{f['question']}{prompts.option_lines(f['options'])}{prompts.LETTER_SUFFIX}"
        return {"answer": prompts.request(style, text + ("\nAnswer:" if style == "reference" else ""), item.images)}

    def score(self, item, outputs, rng):
        out, f = outputs["answer"], item.fields
        letter = choice.extract_letter(out, f["options"])
        return {"strict": float(letter == f["answer"]), "strict_pred": letter,
                "reference": float(choice.reference_substring(f["answer"], out)), "answer": f["answer"]}
