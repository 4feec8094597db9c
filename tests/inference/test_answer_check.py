"""A model trained here answers its own training items when asked through the generate CLI at least as often as its
teacher-forced accuracy says, item by item (inference/answer_check.py: with the prompt the training document's
prefix, an answer right under teacher forcing is what greedy decoding generates). Also the helpers on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fixtures.inference import run_generate_cli
from fixtures.paths import REPO
from oq2vl_jax.inference import answer_check


def test_request_asks_the_last_question_with_the_image_apart():
    record = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": " A circle. "}]}
    assert answer_check.gold_answer(record) == "A circle."
    assert answer_check.request(record, "/data") == {"messages": [
        {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "And the shape?"}], "images": ["/data/a.png"]}
    single = {"conversations": record["conversations"][:2]}
    assert answer_check.request(single, "/data") == {"text": "What colour?", "images": []}


@pytest.mark.slow  # trains the demo-sized model for 200 SFT steps through the CLI (~5-10 min on 2 loaded cores)
def test_greedy_answers_through_the_cli_are_right_where_teacher_forcing_is(tmp_path):
    from oq2vl_jax.demo.sft import write_sft_demo
    from oq2vl_jax.demo.shapes import build_tiny_tokenizer
    from oq2vl_jax.inference import VLMInference

    paths = write_sft_demo(str(tmp_path / "data"), num_train=48, num_eval=1, image_size=32, seed=3)
    tok = build_tiny_tokenizer(str(tmp_path / "tok"))
    run = str(tmp_path / "run")
    source = json.dumps({"kind": "llava", "path": paths["train"], "image_root": paths["image_root"]})
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run(
        [sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs", "demo_sft.py"),
         "--workdir", run, "--config.init.source=random", f"--config.data.sources=({source},)",
         f"--config.data.tokenizer_dir={tok}", "--config.evals=()", "--config.demo_sft.score_answers=False",
         "--config.train.num_steps=200", "--config.train.global_batch_rows=4", "--config.train.eval_every=0",
         "--config.checkpoint.every_steps=200", "--config.log.tensorboard=False"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]

    with open(paths["train"]) as f:
        records = json.load(f)
    forced = answer_check.teacher_forced(VLMInference.load(run), records, paths["image_root"])
    requests = str(tmp_path / "requests.jsonl")
    with open(requests, "w") as f:
        f.writelines(json.dumps(answer_check.request(r, paths["image_root"])) + "\n" for r in records)
    answers_path = str(tmp_path / "answers.jsonl")
    cli = run_generate_cli("--ckpt", run, "--input", requests, "--out", answers_path, "--max-new-tokens", "16",
                           "--batch-size", "16")
    assert cli.returncode == 0, cli.stderr[-3000:]
    with open(answers_path) as f:
        answers = [json.loads(line)["answer"] for line in f]
    asked = [a == answer_check.gold_answer(r) for a, r in zip(answers, records)]
    assert sum(forced) >= len(records) // 4, f"the model learned too little to test anything ({sum(forced)})"
    wrong = [(r["id"], answer_check.gold_answer(r), a) for r, a, f, ok in zip(records, answers, forced, asked)
             if f and not ok]
    assert not wrong, f"right under teacher forcing, wrong when asked: {wrong[:5]}"
    assert sum(asked) >= sum(forced)
