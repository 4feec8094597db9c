"""SEED-Bench, image subset (14,233 questions with data_type "image" in the original harness).

Layout: DIR/seedbench/test.json (AILab-CVC/SEED-Bench `SEED-Bench.json`: {"questions": [{question_id, question,
choice_a..d, answer, data_id, data_type, question_type_id}], "question_type": {name: id}}) and the images
DIR/seedbench/images/{data_id} (the unzipped SEED-Bench-image.zip). Prompts and scores: `MultipleChoiceTask`, as the
harness's `seedbench.py:47-55` (reference score `answer.lower() in output.lower()`). Category: the question type.
"""
import os

from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import Item, MultipleChoiceTask, register


@register
class SEEDBench(MultipleChoiceTask):
    name, description = "seedbench", "SEED-Bench image"

    def load(self, data_dir):
        root = os.path.join(data_dir, "seedbench")
        blob = files.read_json(os.path.join(root, "test.json"), self.name)
        types = {v: k for k, v in blob.get("question_type", {}).items()}
        image_dir = files.require(os.path.join(root, "images"), self.name)
        items = []
        for q in (q for q in blob["questions"] if q.get("data_type") == "image"):
            image = files.require(os.path.join(image_dir, q["data_id"]), self.name)
            fields = {"question": q["question"], "answer": q["answer"],
                      "options": {c: str(q[f"choice_{c.lower()}"]) for c in "ABCD"}}
            kind = q.get("question_type_id")
            items.append(Item(str(q["question_id"]), (image,), fields, types.get(kind, str(kind or ""))))
        return items
