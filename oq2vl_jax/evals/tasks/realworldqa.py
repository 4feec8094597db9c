"""RealWorldQA (765 questions; not in the original harness: the paper's number came from the authors' replies).

Layout: DIR/realworldqa/test.parquet (lmms-lab/RealWorldQA `data/test-*.parquet`; columns image, question (with its
own instruction and, for multiple choice, "A. ..." option lines), answer (a letter, a word or a number)).
Reference prompt (the harness's convention for a question that carries its own instruction): "<image>\\n{question}
\\nAnswer:", greedy 16 tokens with the harness's stop strings; reference score: `answer.lower() in output.lower()` (the
harness's MMBench / SEED-Bench rule). Chat prompt: "<image>\\n{question}".
Strict score: letter answers by letter extraction (`choice.py`) over the option lines; other answers by equality
after the official VQA normalisation (`vqa_norm.py`, which also maps number words to digits).
"""

from __future__ import annotations

import os
import re

from oq2vl_jax.evals import files, kit
from oq2vl_jax.evals.kit import Item, Task, register
from oq2vl_jax.evals.scorers import choice
from oq2vl_jax.evals.scorers.vqa_norm import normalize_answer

_OPTION_LINE = re.compile(r"^([A-F])\.\s*(.+)$", re.M)


@register
class RealWorldQA(Task):
    name = "realworldqa"
    description = "RealWorldQA"

    def load(self, data_dir):
        rows = files.read_parquet(os.path.join(data_dir, "realworldqa", "test.parquet"), self.name)
        items = []
        for n, row in enumerate(rows):
            image = files.image_bytes(row.get("image"), self.name, f"row {n}")
            q = str(row["question"])
            fields = {"question": q, "answer": str(row["answer"]).strip(),
                      "options": {m.group(1): m.group(2).strip() for m in _OPTION_LINE.finditer(q)}}
            items.append(Item(str(n), (image,), fields, "choice" if fields["options"] else "open"))
        return items

    def requests(self, item, style):
        q = item.fields["question"]
        text = f"<image>\n{q}\nAnswer:" if style == "reference" else f"<image>\n{q}"
        return {"answer": kit.request(style, text, item.images)}

    def score(self, item, outputs, rng):
        f, out = item.fields, outputs["answer"]
        if f["options"] and f["answer"] in f["options"]:
            pred = choice.extract_letter(out, f["options"])
            strict = pred == f["answer"]
        else:
            pred = normalize_answer(out)
            strict = pred == normalize_answer(f["answer"])
        return {"strict": float(strict), "strict_pred": pred,
                "reference": float(choice.reference_substring(f["answer"], out)), "answer": f["answer"]}
