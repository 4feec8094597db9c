"""MMBench (English, dev split; 4,377 rows in the original harness's parquet, i.e. 1,164 questions with their
rotated-option copies).

Layout: DIR/mmbench/dev.parquet (lmms-lab/MMBench_EN `data/dev-*.parquet`, the original harness's download) or
DIR/mmbench/MMBench_DEV_EN.tsv (VLMEvalKit, base64 `image`). Columns: index, question, hint, A..D, answer (letter),
category, image.
Reference prompt (`vlm-evaluation/.../harnesses/mmbench.py:46-54`): "<image>\\n{question}\\nA. {A}\\n...D. {D}" (all
four letters, a missing option prints as "None"; the hint is not used) + "\\nAnswer with the option's letter from the
given choices directly.\\nAnswer:". Reference score (`mmbench.py:328-331`): `answer.lower() in output.lower()`, per
row.
Chat prompt: "<image>\\n" + hint + question + existing options + the letter instruction (lmms-eval's order).
Strict score: letter extraction (`choice.py`); circular evaluation when rotated copies are present (rows grouped by
`index % 1,000,000`; a group counts only if every copy is right; VLMEvalKit), else per row.
"""

from __future__ import annotations

import os
from collections import defaultdict

from oq2vl_jax.evals import files
from oq2vl_jax.evals.kit import IMAGE_MARKER, Item, MultipleChoiceTask, mean_metrics, option_lines, percent, register
from oq2vl_jax.evals.scorers import choice

CIRCULAR_MOD = 1_000_000


def mc_items(rows: list[dict], task: str, letters=("A", "B", "C", "D"), *, image_key: str = "image") -> list[Item]:
    items = []
    for n, row in enumerate(rows):
        index = row.get("index", n)
        hint = row.get("hint")
        hint = "" if hint is None or str(hint) in ("", "nan", "None") else str(hint)
        fields = {"index": int(index), "question": str(row["question"]), "hint": hint,
                  "raw_options": {c: row.get(c) for c in letters}, "options": choice.options_from(row, letters),
                  "answer": str(row["answer"]).strip()}
        image = files.image_bytes(row.get(image_key), task, f"row {n} (index {index})")
        items.append(Item(str(index), (image,), fields, str(row.get("category") or "")))
    return items


@register
class MMBench(MultipleChoiceTask):
    name, description = "mmbench", "MMBench-EN dev"

    def load(self, data_dir):
        parquet = os.path.join(data_dir, "mmbench", "dev.parquet")
        tsv = os.path.join(data_dir, "mmbench", "MMBench_DEV_EN.tsv")
        if not os.path.exists(parquet) and os.path.exists(tsv):
            return mc_items(files.read_tsv(tsv, self.name), self.name)
        return mc_items(files.read_parquet(parquet, self.name), self.name)

    def question_text(self, item, style):
        f = item.fields
        if style == "reference":  # all four letters, a missing option as "None"; no hint
            return f"{IMAGE_MARKER}\n{f['question']}" + "".join(
                f"\n{c}. {'None' if v is None else v}" for c, v in f["raw_options"].items())
        hint = f["hint"] + "\n" if f["hint"] else ""
        return f"{IMAGE_MARKER}\n{hint}{f['question']}{option_lines(f['options'])}"

    def score(self, item, outputs, rng):
        return super().score(item, outputs, rng) | {"group": item.fields["index"] % CIRCULAR_MOD}

    def aggregate(self, records):
        strict = mean_metrics(records, "strict")
        groups = defaultdict(list)
        for r in records:
            groups[r["group"]].append(r["strict"])
        strict["per_row"] = strict["score"]
        if any(len(v) > 1 for v in groups.values()):
            strict["score"] = percent(float(all(v)) for v in groups.values())
            strict["circular_groups"] = len(groups)
        return {"strict": strict, "reference": mean_metrics(records, "reference")}
