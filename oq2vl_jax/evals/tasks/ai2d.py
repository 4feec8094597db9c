"""AI2D, all 15,501 questions as the original harness uses them (split "test" for the 3,088 questions of the test
images in ai2d_test_ids.csv, "val" for the rest; the headline is over all).

Layout (the original harness's download names): DIR/ai2d/val_qa/questions/{image}.json (the unzipped ai2d-all.zip
`questions/` folder: {"imageName", "questions": {text: {answerTexts, correctAnswer, questionId}}}),
DIR/ai2d/val_qa/images/{imageName}, DIR/ai2d/ai2d_test_ids.csv (one image id per row).
Prompt (`harnesses/ai2d.py:174-176`): "<image>\\n{question}\\nA. ...\\nD. ...\\nAnswer with the option's letter from the
given choices directly.\\nAnswer:" (chat: the same message without "\\nAnswer:" in the chat template).
Reference score (`ai2d.py:237, 299-343`): the first-token probabilities of "A".."D" (always four, renormalised), argmax
vs the answer index. Strict score: generated text, letter extraction (`choice.py`).
"""

from __future__ import annotations

import csv
import os

from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import Item, MultipleChoiceTask, Request, register
from oq2vl_jax.evals.scorers import choice

PROB_CANDIDATES = ("A", "B", "C", "D")


@register
class AI2D(MultipleChoiceTask):
    name, description = "ai2d", "AI2D (all questions)"

    def load(self, data_dir):
        root = os.path.join(data_dir, "ai2d")
        ids_csv = files.require(os.path.join(root, "ai2d_test_ids.csv"), self.name)
        with open(ids_csv, newline="") as f:
            test_ids = {int(row[0]) for row in csv.reader(f) if row and row[0].strip().isdigit()}
        qdir = os.path.join(root, "val_qa", "questions")
        image_dir = files.require(os.path.join(root, "val_qa", "images"), self.name)
        items = []
        for name in files.list_files(qdir, self.name, ".json"):
            blob = files.read_json(os.path.join(qdir, name), self.name)
            image = files.require(os.path.join(image_dir, blob["imageName"]), self.name)
            split = "test" if int(name.split(".")[0]) in test_ids else "val"
            for question, info in blob["questions"].items():
                texts = [str(t) for t in info["answerTexts"]]
                fields = {"question": question, "choices": texts, "label": int(info["correctAnswer"]),
                          "options": {chr(65 + i): t for i, t in enumerate(texts)}}
                items.append(Item(str(info["questionId"]), (image,), fields, split))
        return items

    def requests(self, item, style):
        gen = super().requests(item, style)["answer"]
        probs = Request(gen.prompt, gen.images, kind="score", template=gen.template, candidates=PROB_CANDIDATES)
        return {"answer": gen, "probs": probs}

    def score(self, item, outputs, rng):
        f = item.fields
        gold = chr(65 + f["label"])
        letter = choice.extract_letter(outputs["answer"], f["options"])
        probs = list(outputs["probs"])
        ref_pred = probs.index(max(probs))  # np.argmax: the first maximum
        return {"strict": float(letter == gold), "strict_pred": letter,
                "reference": float(ref_pred == f["label"]), "reference_pred": chr(65 + ref_pred), "answer": gold}
