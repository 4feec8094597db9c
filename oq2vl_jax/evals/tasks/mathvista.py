"""MathVista testmini (1,000 questions).

Layout (the original harness's download names): DIR/mathvista/testmini.parquet (AI4Math/MathVista; columns pid,
question, query, image ("images/N.jpg"), choices, unit, precision, answer, question_type multi_choice|free_form,
answer_type text|integer|float|list) and DIR/mathvista/images/N.jpg (the unzipped images.zip; the parquet's
`decoded_image` is used when the file is absent).
Reference prompt (`harnesses/mathvista.py:47-63`): "<image>\\n{question}" + options "\\nA. ..." and the letter
instruction for multiple choice, else the short-answer instruction, + "\\nAnswer:". Reference score (the harness
passes `answer_type` where the scorer expects `question_type`, so every item is scored as open,
`mathvista.py:293, 364`): `eval_open(gold, parse_open(output))` (`mmmu_parse.py`), gold = the option letter for
multiple choice, else the answer.
Chat prompt: the dataset's `query` (its own hint and instructions), images first.
Strict score: MathVista's rule-based extraction and normalisation (`evaluation/extract_answer.py`,
`calculate_score.py`): empty -> ""; a response equal to a choice; an int / float response for integer / float
answers; 'The answer is "X".'; otherwise the raw response stands in for the LLM extraction step, which is NOT run
(so strict scores of verbose answers are lower than MathVista's GPT-judged numbers). Multiple choice: "(X)" -> X, a
letter picks its option, else the option nearest in edit distance; integer -> str(int(float)); float -> rounded to
the item's precision; then exact string equality with the answer.
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.evals import files, kit
from oq2vl_jax.evals.kit import Item, Task, register
from oq2vl_jax.evals.scorers import mmmu_parse


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def extract(response: str, f: dict) -> str:
    if response == "":
        return ""
    if f["question_type"] == "multi_choice" and response in f["choices"]:
        return response
    if f["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if f["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    m = re.search(r'The answer is "(.*)"\.', response)
    if m:
        return m.group(1)
    return response  # where the official code asks an LLM


def normalize(extraction: str, f: dict) -> str | None:
    if f["question_type"] == "multi_choice":
        extraction = extraction.strip()
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        seq = [chr(65 + i) for i in range(len(f["choices"]))]
        if extraction in seq:
            return f["choices"][seq.index(extraction)]
        dists = [edit_distance(extraction, c) for c in f["choices"]]
        return f["choices"][dists.index(min(dists))]
    try:
        if f["answer_type"] == "integer":
            return str(int(float(extraction)))
        if f["answer_type"] == "float":
            return str(round(float(extraction), int(f["precision"])))
    except (ValueError, TypeError):
        return None
    return str(extraction)


@register
class MathVista(Task):
    name = "mathvista"
    description = "MathVista testmini (rule-based; no LLM judge)"

    def load(self, data_dir):
        root = os.path.join(data_dir, "mathvista")
        rows = files.read_parquet(os.path.join(root, "testmini.parquet"), self.name)
        items = []
        for row in rows:
            path = os.path.join(root, "images", str(row["image"]).replace("images/", ""))
            image = path if os.path.exists(path) or not row.get("decoded_image") else \
                files.image_bytes(row["decoded_image"], self.name, f"pid {row['pid']}")
            if isinstance(image, str):
                files.require(image, self.name)
            fields = {k: row.get(k) for k in ("question", "query", "unit", "precision", "answer_type",
                                               "question_type")}
            fields["choices"] = [str(c) for c in (row.get("choices") or [])]
            fields["answer"] = str(row["answer"])
            items.append(Item(str(row["pid"]), (image,), fields, str(row["question_type"])))
        return items

    def requests(self, item, style):
        f = item.fields
        if style == "chat":
            query = f["query"] or f["question"]  # the published rows all carry a query
            return {"answer": kit.request(style, f"<image>\n{query}", item.images, chat_max_new_tokens=64)}
        text = "<image>\n" + f["question"]
        if f["question_type"] == "multi_choice":
            text += "".join(f"\n{chr(65 + j)}. {c}" for j, c in enumerate(f["choices"])) + kit.LETTER_SUFFIX
        else:
            text += kit.VQA_SUFFIX
        return {"answer": kit.request(style, text + "\nAnswer:", item.images)}

    def score(self, item, outputs, rng):
        f, out = item.fields, outputs["answer"]
        strict_pred = normalize(extract(out, f), f)
        ref_gold = f["answer"]
        if f["question_type"] == "multi_choice" and f["answer"] in f["choices"]:
            ref_gold = chr(65 + f["choices"].index(f["answer"]))
        return {"strict": float(strict_pred == f["answer"]), "strict_pred": strict_pred,
                "reference": float(mmmu_parse.eval_open(ref_gold, mmmu_parse.parse_open(out))),
                "answer": f["answer"]}
