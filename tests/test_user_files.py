"""Nothing of the user's is harmed: every command refuses, in one line and before loading a model or compiling, an
output path that holds something it did not write; the user's files hash the same before and after."""

from __future__ import annotations

import hashlib
import json
import os

from fixtures.entry_points import one_error_line, run_many, run_train
from fixtures.inference import ckpt  # noqa: F401 (pytest fixture: a tiny random checkpoint)


def digest(root) -> dict[str, str]:
    """sha256 of every file under `root` (or of the file `root`), by relative path."""
    root = str(root)
    if os.path.isfile(root):
        return {"": hashlib.sha256(open(root, "rb").read()).hexdigest()}
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_generate_and_evaluate_refuse_the_users_files(ckpt, tmp_path):  # noqa: F811
    from fixtures.evals import write_pope

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hello"}) + "\n")
    notes = tmp_path / "notes.txt"  # the user's notes; the last line is not JSON and has no newline
    notes.write_text("buy milk\n{call Bob")
    answers_dir = tmp_path / "answers"
    answers_dir.mkdir()
    data = tmp_path / "data"
    write_pope(str(data))
    # an evaluation folder of the user's: their own summary and report, no run file of ours
    theirs = tmp_path / "their_eval"
    theirs.mkdir()
    (theirs / "summary.json").write_text('{"mine": 1}\n')
    (theirs / "report.md").write_text("# my report\n")
    # our run file, but a predictions file the user put there
    ours = tmp_path / "our_eval"
    (ours / "pope").mkdir(parents=True)
    (ours / "run.json").write_text(json.dumps({"ckpt": os.path.abspath(ckpt), "prompt": "reference", "seed": 0,
                                               "limit": 0}))
    (ours / "pope" / "predictions.jsonl").write_text('{"question": 1, "answer": "yes"}\n')
    before = digest(tmp_path)

    gen = ["--ckpt", ckpt, "--input", str(prompts), "--template", "base", "--max-new-tokens", "2"]
    ev = ["--ckpt", ckpt, "--task", "pope", "--data", str(data), "--batch", "2"]
    results = run_many([("oq2vl_jax.generate", gen + ["--out", str(notes)]),
                        ("oq2vl_jax.generate", gen + ["--out", str(answers_dir)]),
                        ("oq2vl_jax.generate", gen + ["--out", str(tmp_path / "no_such_dir" / "a.jsonl")]),
                        ("oq2vl_jax.evaluate", ev + ["--out", str(theirs)]),
                        ("oq2vl_jax.evaluate", ev + ["--out", str(ours)]),
                        ("oq2vl_jax.evaluate", ev + ["--out", str(notes)])])
    expected = [[str(notes), "not an answers file"], [str(answers_dir), "is a directory"], ["does not exist"],
                [str(theirs), "no evaluation of this tool wrote", "summary.json"],
                [str(ours / "pope" / "predictions.jsonl"), "not a predictions file"],
                [str(notes), "is a file"]]
    for result, texts in zip(results, expected, strict=True):
        one_error_line(result["rc"], result["stderr"], *texts)
    assert digest(tmp_path) == before  # nothing changed, nothing added


def test_train_refuses_the_users_metrics_and_checkpoint_entries(tmp_path):
    args = ["--config", "configs/demo.py", "--config.train.num_steps=1"]
    # the user's own metrics.jsonl (two plain text lines) in the workdir
    first = tmp_path / "first"
    first.mkdir()
    (first / "metrics.jsonl").write_text("my metrics\nstep 1: fine\n")
    # a folder the user named like an Orbax leftover, which Orbax deletes at start
    second = tmp_path / "second"
    (second / "checkpoints" / "old.orbax-checkpoint-tmp-123").mkdir(parents=True)
    (second / "checkpoints" / "old.orbax-checkpoint-tmp-123" / "keep.txt").write_text("mine\n")
    before = {"first": digest(first), "second": digest(second)}

    proc = run_train(*args, "--workdir", str(first))
    one_error_line(proc.returncode, proc.stderr, str(first / "metrics.jsonl"), "not the metrics file")
    proc = run_train(*args, "--workdir", str(second))
    one_error_line(proc.returncode, proc.stderr, str(second / "checkpoints" / "old.orbax-checkpoint-tmp-123"),
                   "not written by the trainer")
    assert {"first": digest(first), "second": digest(second)} == before
    assert sorted(os.listdir(first)) == ["metrics.jsonl"] and sorted(os.listdir(second)) == ["checkpoints"]
