"""POPE on COCO: adversarial, popular and random splits (3,000 + 3,000 + 2,910 questions).

Layout (the original harness's download names): DIR/pope/coco_pope_{adversarial,popular,random}.json (JSON lines
{question_id, image, text, label yes|no}; AoiDragon/POPE `output/coco/`) and DIR/pope/val_images/{image} (COCO
val2014, renamed as the harness does).
Reference prompt (`harnesses/pope.py:169`): the VQA prompt. Reference score (`pope.py:405-437`):
`output.strip(",").strip(".").lower()` must equal the label; accuracy and F1 (prediction "yes" positive, anything
else negative) per split; headline = mean over the splits of the accuracy.
Chat prompt: "<image>\\n{question}" + "\\nAnswer the question using a single word or phrase."
Strict score (POPE's `evaluate.py`): keep the text before the first ".", drop commas, split on spaces; "no" if the words
contain "No", "no" or "not", else "yes". Per split accuracy, precision, recall, F1 and the share of "yes" among the
model's answers (lmms-eval's yes-ratio counts the ground truth instead); headline = mean accuracy over the splits.
"""

from __future__ import annotations

import os

from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import VQA_SUFFIX, Item, ShortAnswerTask, register

SPLITS = ("adversarial", "popular", "random")


def official_label(output: str) -> str:
    text = output.split(".")[0] if "." in output else output
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def reference_label(output: str) -> str:
    return output.strip(",").strip(".").lower()


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p != "yes" and l == "yes" for p, l in zip(preds, labels))
    correct = sum(p == l for p, l in zip(preds, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"accuracy": 100.0 * correct / len(labels), "precision": 100.0 * precision, "recall": 100.0 * recall,
            "f1": 100.0 * f1, "yes_ratio": 100.0 * sum(p == "yes" for p in preds) / len(preds), "n": len(labels)}


@register
class POPE(ShortAnswerTask):
    name, description = "pope", "POPE (COCO)"
    chat_suffix = VQA_SUFFIX

    def load(self, data_dir):
        root = os.path.join(data_dir, "pope")
        image_dir = files.require(os.path.join(root, "val_images"), self.name)
        items = []
        for split in SPLITS:
            for q in files.read_jsonl(os.path.join(root, f"coco_pope_{split}.json"), self.name):
                image = files.require(os.path.join(image_dir, q["image"]), self.name)
                items.append(Item(f"{split}-{q['question_id']}", (image,),
                                  {"question": q["text"], "label": q["label"]}, split))
        return items

    def score(self, item, outputs, rng):
        out, label = outputs["answer"], item.fields["label"]
        strict_pred, ref_pred = official_label(out), reference_label(out)
        return {"strict": float(strict_pred == label), "strict_pred": strict_pred,
                "reference": float(ref_pred == label), "reference_pred": ref_pred, "answer": label}

    def aggregate(self, records):
        result = {}
        for scorer in ("strict", "reference"):
            splits = {}
            for split in SPLITS:
                rows = [r for r in records if r["category"] == split]
                if rows:
                    splits[split] = binary_metrics([r[f"{scorer}_pred"] for r in rows], [r["answer"] for r in rows])
            result[scorer] = {
                "score": sum(m["accuracy"] for m in splits.values()) / max(1, len(splits)),
                "f1": sum(m["f1"] for m in splits.values()) / max(1, len(splits)),
                "n": len(records), "by_split": splits,
                "by_category": {s: m["accuracy"] for s, m in splits.items()}}
        return result
