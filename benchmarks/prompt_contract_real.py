"""Is a fine-tuned model asked as it was taught? A before/after measurement on a small real image set.

    python benchmarks/prompt_contract_real.py make DATA_DIR            # needs scikit-image (its shipped sample images)
    python -m oq2vl_jax.train --config configs/demo_sft.py --workdir RUN --config.init.source=random \\
        --config.data.sources='({"kind": "llava", "path": "DATA_DIR/train.json", "image_root": "DATA_DIR/images"},)' \\
        --config.data.tokenizer_dir=DATA_DIR/tokenizer --config.evals='()' --config.demo_sft.score_answers=False \\
        --config.train.num_steps=300 --config.train.eval_every=0
    python benchmarks/prompt_contract_real.py measure DATA_DIR RUN [--other-code DIR] [--step N]

`make`: the 20 scikit-image sample photographs and micrographs that ship inside its wheel (`skimage/data/*.png|jpg`:
astronaut, chelsea the cat, coffee, coins, the moon, a rocket, ...), two questions each in LLaVA's layout
("<image>\\nWhat is shown in the image?" -> "A cat.", "<image>\\nIs the image in colour?" -> "Yes." / "No.", the
colour answer read from the pixels): 40 conversations, plus a tokenizer of their words (the demo's BPE builder).
`measure`: the model's teacher-forced accuracy on its 40 training answers, and its greedy answers to the same
questions asked through `python -m oq2vl_jax.generate` with the image apart from the text (what `--image X --prompt Q`
sends, batch mode so the model loads once), by this checkout and, with --other-code, by another checkout of the
package (e.g. `git archive main`); there also as a message whose text part starts with "\\n" (the layout training saw).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

NAMES = {"astronaut": "An astronaut.", "brick": "A brick wall.", "camera": "A photographer.", "cell": "A cell.",
         "chelsea": "A cat.", "chessboard_RGB": "A chessboard.", "clock_motion": "A clock.",
         "coffee": "A cup of coffee.", "coins": "Coins.", "grass": "Grass.", "gravel": "Gravel.", "horse": "A horse.",
         "hubble_deep_field": "Galaxies.", "ihc": "Stained tissue.", "logo": "A logo.", "moon": "The moon.",
         "motorcycle_left": "A motorcycle.", "page": "A page of text.", "retina": "An eye.", "rocket": "A rocket."}
QUESTIONS = ("What is shown in the image?", "Is the image in colour?")


def make(out: str) -> None:
    import numpy as np
    import skimage
    from PIL import Image

    from oq2vl_jax.demo.shapes import build_tiny_tokenizer

    src_dir = os.path.join(os.path.dirname(skimage.__file__), "data")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    records = []
    for name, what in NAMES.items():
        src = next(os.path.join(src_dir, f) for f in sorted(os.listdir(src_dir)) if f.split(".")[0] == name)
        rgb = Image.open(src).convert("RGB")
        arr = np.asarray(rgb).astype(np.int32)
        colour = "Yes." if np.abs(arr - arr.mean(-1, keepdims=True)).mean() > 4 else "No."
        rgb.save(os.path.join(out, "images", name + ".png"))
        for k, (question, answer) in enumerate(zip(QUESTIONS, (what, colour))):
            records.append({"id": f"{name}-{k}", "image": name + ".png", "conversations": [
                {"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]})
    with open(os.path.join(out, "train.json"), "w") as f:
        json.dump(records, f, indent=1)
    words = [t["value"].replace("<image>", "") for r in records for t in r["conversations"]]
    build_tiny_tokenizer(os.path.join(out, "tokenizer"), words)
    print(f"{len(records)} conversations about {len(NAMES)} images in {out}")


def _generate(code: str, ckpt: str, step: int | None, requests: list[dict], work: str, tag: str) -> list[str]:
    inp, out = os.path.join(work, f"{tag}.in.jsonl"), os.path.join(work, f"{tag}.out.jsonl")
    with open(inp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    env = dict(os.environ, PYTHONPATH=code)
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.generate", "--ckpt", ckpt, "--input", inp, "--out", out,
                           "--max-new-tokens", "16", "--batch-size", "40"] + (["--step", str(step)] if step is not None else []), cwd=code, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"generate ({code}, {tag}) failed: {proc.stderr[-2000:]}")
    with open(out) as f:
        return [json.loads(line)["answer"] for line in f]


def measure(data: str, run: str, other_code: str | None, step: int | None = None) -> dict:
    from oq2vl_jax.inference import VLMInference
    from oq2vl_jax.inference import answer_check

    with open(os.path.join(data, "train.json")) as f:
        records = json.load(f)
    image_root = os.path.join(data, "images")
    gold = [answer_check.gold_answer(r) for r in records]
    vlm = VLMInference.load(run, step=step)
    forced = answer_check.teacher_forced(vlm, records, image_root)
    apart = [answer_check.request(r, image_root) for r in records]
    results = {"items": len(records), "teacher_forced": sum(forced)}
    with tempfile.TemporaryDirectory() as work:
        answers = {"this checkout, image apart": _generate(REPO, run, step, apart, work, "here")}
        if other_code:
            answers["other checkout, image apart"] = _generate(other_code, run, step, apart, work, "other")
            parts = [{"messages": [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": "\n" + r["text"]}]}], "images": r["images"]}
                for r in apart]
            answers["other checkout, text part '\\n' + question"] = _generate(other_code, run, step, parts, work, "other_nl")
    for name, texts in answers.items():
        right = [a == g for a, g in zip(texts, gold)]
        results[name] = {"right": sum(right),
                         "forced_right_but_asked_wrong": sum(f and not r for f, r in zip(forced, right)),
                         "examples": [(g, a) for g, a, r in zip(gold, texts, right) if not r][:4]}
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("data")
    s = sub.add_parser("measure")
    s.add_argument("data")
    s.add_argument("run")
    s.add_argument("--other-code", help="another checkout of the package (its root directory)")
    s.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    args = p.parse_args()
    if args.command == "make":
        make(args.data)
    else:
        print(json.dumps(measure(args.data, args.run, args.other_code, args.step), indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
