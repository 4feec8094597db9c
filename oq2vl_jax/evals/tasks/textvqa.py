"""TextVQA val (5,000 questions).

Layout (the original harness's download names): DIR/text-vqa/TextVQA_0.5.1_val.json ({"data": [{question_id,
image_id, question, answers (10)}]}), DIR/text-vqa/textvqa_val_v051_ocr.jsonl (LLaVA's question file: {question_id,
text = question + "\\nReference OCR token: ..."}), DIR/text-vqa/train_val_images/{image_id}.jpg.
Reference prompts (`harnesses/textvqa.py:204-207`): the VQA prompt with the OCR-token question ("ocr") and with the
question cut before "\\nReference OCR token:" ("pure"); outputs lose "\\n", ".", "," and are lower-cased and cut at
`<|endofchunk|>` (`textvqa.py:299-300`); then the official soft accuracy. Reference headline: TextVQA-OCR (the
harness reports OCR and Pure; both are in the summary).
Chat prompt: "<image>\\n{question}" + "\\nAnswer the question using a single word or phrase." (no OCR tokens).
Strict score: the official soft accuracy with the official normalisation (`vqa_norm.py`) of the raw output of the
prompt without OCR tokens (the benchmark as published gives no OCR tokens).
"""

from __future__ import annotations

import os

from oq2vl_jax.evals import files, kit
from oq2vl_jax.evals.kit import Item, Task, mean_metrics, percent, register
from oq2vl_jax.evals.scorers.vqa_norm import soft_accuracy

OCR_MARK = "\nReference OCR token:"


def harness_clean(output: str) -> str:
    return output.replace("\n", "").replace(".", "").replace(",", "").lower().split("<|endofchunk|>")[0]


@register
class TextVQA(Task):
    name = "textvqa"
    description = "TextVQA val"

    def load(self, data_dir):
        root = os.path.join(data_dir, "text-vqa")
        data = files.read_json(os.path.join(root, "TextVQA_0.5.1_val.json"), self.name)["data"]
        ocr = {int(q["question_id"]): q["text"]
               for q in files.read_jsonl(os.path.join(root, "textvqa_val_v051_ocr.jsonl"), self.name)}
        image_dir = files.require(os.path.join(root, "train_val_images"), self.name)
        items = []
        for a in data:
            qid = int(a["question_id"])
            image = files.require(os.path.join(image_dir, f"{a['image_id']}.jpg"), self.name)
            ocr_question = ocr.get(qid, a["question"])
            fields = {"question_ocr": ocr_question, "question": ocr_question.split(OCR_MARK)[0],
                      "answers": list(a["answers"])}
            items.append(Item(str(qid), (image,), fields))
        return items

    def requests(self, item, style):
        f = item.fields
        if style == "reference":
            return {"ocr": kit.request(style, kit.reference_vqa(f["question_ocr"]), item.images),
                    "pure": kit.request(style, kit.reference_vqa(f["question"]), item.images)}
        return {"pure": kit.request(style, f"<image>\n{f['question']}{kit.VQA_SUFFIX}", item.images)}

    def score(self, item, outputs, rng):
        answers = item.fields["answers"]
        ref_out = outputs.get("ocr", outputs["pure"])
        return {"strict": soft_accuracy(outputs["pure"], answers),
                "reference": soft_accuracy(harness_clean(ref_out), answers),
                "reference_pure": soft_accuracy(harness_clean(outputs["pure"]), answers),
                "answer": max(set(answers), key=answers.count)}

    def aggregate(self, records):
        ref = mean_metrics(records, "reference")
        ref["pure"] = percent(r["reference_pure"] for r in records)
        return {"strict": mean_metrics(records, "strict"), "reference": ref}
