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

from oq2vl_jax.evals import files, prompt_styles as prompts
from oq2vl_jax.evals.kit import Item, Task, mean_metrics, percent
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


class MMBench(Task):
    name = "mmbench"
    description = "MMBench-EN dev"

    def load(self, data_dir):
        parquet = os.path.join(data_dir, "mmbench", "dev.parquet")
        tsv = os.path.join(data_dir, "mmbench", "MMBench_DEV_EN.tsv")
        if not os.path.exists(parquet) and os.path.exists(tsv):
            return mc_items(files.read_tsv(tsv, self.name), self.name)
        return mc_items(files.read_parquet(parquet, self.name), self.name)

    def requests(self, item, style):
        f = item.fields
        if style == "reference":
            opts = "".join(f"\n{c}. {'None' if v is None else v}" for c, v in f["raw_options"].items())
            text = f"<image>\n{f['question']}{opts}\nAnswer with the option's letter from the given choices directly." \
                   "\nAnswer:"
        else:
            hint = f["hint"] + "\n" if f["hint"] else ""
            text = f"<image>\n{hint}{f['question']}{prompts.option_lines(f['options'])}{prompts.LETTER_SUFFIX}"
        return {"answer": prompts.request(style, text, item.images)}

    def score(self, item, outputs, rng):
        out, f = outputs["answer"], item.fields
        letter = choice.extract_letter(out, f["options"])
        return {"strict": float(letter == f["answer"]), "strict_pred": letter,
                "reference": float(choice.reference_substring(f["answer"], out)), "answer": f["answer"],
                "group": f["index"] % CIRCULAR_MOD}

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
