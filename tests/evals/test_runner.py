"""The runner with a scripted fake model: resume after a kill (truncated predictions, partial last line), batch size
and data-parallel sharding leave the summary unchanged; the CLI writes summary and report; compare's McNemar."""

import argparse
import json
import os
import subprocess
import sys
import threading
import zlib

import pytest

from fixtures.paths import REPO
from fixtures.evals import write_demo, write_pope
from oq2vl_jax import evaluate as cli
from oq2vl_jax.demo.shapes import write_demo_dataset
from oq2vl_jax.errors import UserError
from oq2vl_jax.evals import compare, registry, runner

ANSWERS = ("red", "a circle", "Yes", "No", "blue", "circle", "at the top left", "in the center")


class FakeModel:
    """Deterministic: the answer depends only on the prompt and images. Counts the requests it served."""

    def __init__(self):
        self.generated, self.scored = 0, 0
        self.lock = threading.Lock()

    @staticmethod
    def _key(r):
        return zlib.crc32((r.template + r.prompt + "|".join(map(str, r.images))).encode())

    def generate(self, requests):
        with self.lock:
            self.generated += len(requests)
        return [ANSWERS[self._key(r) % len(ANSWERS)] for r in requests]

    def score(self, requests):
        with self.lock:
            self.scored += len(requests)
        return [[((self._key(r) >> i) % 7 + 1) / 28 for i in range(len(r.candidates))] for r in requests]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo"))
    write_demo_dataset(d, num_train=1, num_eval=1, image_size=16, num_sft=40, with_tokenizer=False)
    return d


def _run(data, out, model, batch=8, style="reference", tasks="demo", limit=0):
    args = argparse.Namespace(task=tasks, data=data, out=out, limit=limit, prompt=style, batch=batch, seed=0,
                              dry_run=False, ckpt="fake")
    return cli.evaluate(args, model=model)


def test_resume_after_kill_gives_identical_summary(demo_dir, tmp_path):
    out = str(tmp_path / "out")
    full = _run(demo_dir, out, FakeModel())
    pred = os.path.join(out, "demo", runner.PREDICTIONS)
    with open(pred, "rb") as f:
        lines = f.read().split(b"\n")
    assert len(lines) == 41 and lines[-1] == b""
    assert full["tasks"]["demo"]["complete"] and full["tasks"]["demo"]["scored"] == 40
    with open(pred, "wb") as f:  # killed mid-write: 17 records and half of the 18th
        f.write(b"\n".join(lines[:17]) + b"\n" + lines[17][: len(lines[17]) // 2])
    model = FakeModel()
    again = _run(demo_dir, out, model)
    assert model.generated == 24  # only the 23 unfinished items ran: 3 batches of 8, the last padded by one
    assert again == full
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == full
    assert os.path.exists(os.path.join(out, "report.md"))
    model = FakeModel()
    assert _run(demo_dir, out, model) == full and model.generated == 0  # nothing left to run


def test_batch_size_and_limit(demo_dir, tmp_path):
    a = _run(demo_dir, str(tmp_path / "a"), FakeModel(), batch=8)
    b = _run(demo_dir, str(tmp_path / "b"), FakeModel(), batch=3)
    assert a["tasks"] == b["tasks"]
    c = _run(demo_dir, str(tmp_path / "c"), FakeModel(), limit=5)
    assert c["tasks"]["demo"]["items"] == 5 and c["tasks"]["demo"]["scored"] == 5


def test_data_parallel_two_processes(demo_dir, tmp_path):
    single = _run(demo_dir, str(tmp_path / "one"), FakeModel(), batch=4)
    out = str(tmp_path / "two")
    task = registry.TASKS["demo"]()
    items = task.load(demo_dir)
    barrier = threading.Barrier(2)
    model = FakeModel()
    results = [None, None]

    def work(rank):
        results[rank] = runner.run_task(task, items, model, out, style="reference", batch=4, seed=0,
                                        process_index=rank, process_count=2, barrier=lambda name: barrier.wait())

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results[0] == results[1] and len(results[0]) == 40
    assert model.generated == 2 * 4 * 5  # 20 items per process in 5 batches of 4, nothing padded here
    assert sorted(os.listdir(os.path.join(out, "demo"))) == [runner.PREDICTIONS]  # parts merged
    summary = runner.summarize(task, items, results[0])
    assert summary == single["tasks"]["demo"]


def test_score_requests_and_other_out_dir_run(tmp_path):
    write_pope(str(tmp_path / "data"))
    from fixtures.evals import write_ai2d
    write_ai2d(str(tmp_path / "data"))
    model = FakeModel()
    s = _run(str(tmp_path / "data"), str(tmp_path / "out"), model, tasks="pope,ai2d")
    assert model.scored == 3 and set(s["tasks"]) == {"pope", "ai2d"}
    assert set(s["tasks"]["pope"]["strict"]["by_split"]) == {"adversarial", "popular", "random"}
    with pytest.raises(UserError, match="different prompt"):
        _run(str(tmp_path / "data"), str(tmp_path / "out"), model, tasks="pope", style="chat")


def test_damaged_middle_line_is_an_error(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "1"}\nnot json\n{"id": "3"}\n')
    with pytest.raises(UserError, match="line 2"):
        runner.read_records(str(p))


def _write_run(out, scores):
    os.makedirs(os.path.join(out, "t"), exist_ok=True)
    with open(os.path.join(out, "t", runner.PREDICTIONS), "w") as f:
        for i, s in enumerate(scores):
            f.write(json.dumps({"id": str(i), "category": "", "strict": s, "reference": s}) + "\n")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"tasks": {"t": {"strict": {"score": 100 * sum(scores) / len(scores)},
                                   "reference": {"score": 100 * sum(scores) / len(scores)}}}}, f)


def test_compare_mcnemar_by_hand(tmp_path):
    # 20 paired items: both right on 8, both wrong on 5, A only on 1, B only on 6.
    a = [1.0] * 8 + [0.0] * 5 + [1.0] + [0.0] * 6
    b = [1.0] * 8 + [0.0] * 5 + [0.0] + [1.0] * 6
    _write_run(str(tmp_path / "A"), a)
    _write_run(str(tmp_path / "B"), b)
    r = compare.compare(str(tmp_path / "A"), str(tmp_path / "B"), seed=1)["t"]["strict"]
    assert (r["a_only_right"], r["b_only_right"]) == (1, 6)
    # exact two-sided: 2 * P[Bin(7, 1/2) <= 1] = 2 * (1 + 7) / 128 = 0.125
    assert r["mcnemar_p"] == pytest.approx(0.125)
    assert r["diff"] == pytest.approx(25.0)  # 70% - 45%
    lo, hi = r["bootstrap_95"]
    assert lo < 25.0 < hi and r["bootstrap_95"] == compare.compare(str(tmp_path / "A"), str(tmp_path / "B"),
                                                                   seed=1)["t"]["strict"]["bootstrap_95"]
    assert compare.mcnemar_exact(0, 5) == pytest.approx(2 / 32) and compare.mcnemar_exact(0, 0) == 1.0
    assert compare.mcnemar_exact(3, 3) == 1.0


def test_cli_entry_point(tmp_path):
    data = str(tmp_path / "data")
    write_demo(data)
    env = dict(os.environ, PYTHONPATH=REPO)
    run = lambda *a: subprocess.run([sys.executable, "-m", "oq2vl_jax.evaluate", *a], capture_output=True,  # noqa
                                    text=True, env=env, cwd=str(tmp_path))
    r = run("--task", "demo", "--data", data, "--out", str(tmp_path / "o"), "--dry_run")
    assert r.returncode == 0, r.stderr
    assert "demo: 3 items" in r.stdout and "Question: What colour is the shape?" in r.stdout
    r = run("--task", "pope", "--data", data, "--out", str(tmp_path / "o"), "--dry_run")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "pope/val_images" in r.stderr
    _write_run(str(tmp_path / "A"), [1.0, 0.0])
    _write_run(str(tmp_path / "B"), [1.0, 1.0])
    r = run("compare", str(tmp_path / "A"), str(tmp_path / "B"))
    assert r.returncode == 0, r.stderr
    assert "| t | strict | 50.00 | 100.00 | 50.00 | 2 | 0 | 1 | 1 |" in r.stdout
    r = run("compare", str(tmp_path / "A"), str(tmp_path / "missing"))
    assert r.returncode == 2 and "missing" in r.stderr


def test_help_lists_the_tasks_and_records_carry_the_prompt(demo_dir, tmp_path):
    help_text = " ".join(cli._eval_parser().format_help().split())
    assert all(name in help_text for name in registry.TASKS)

    class PromptModel(FakeModel):
        def prompt_text(self, r):
            return f"<{r.template}>{r.prompt}"

    out = str(tmp_path / "out")
    _run(demo_dir, out, PromptModel(), style="chat", limit=3)
    records = runner.read_records(os.path.join(out, "demo", runner.PREDICTIONS))
    assert len(records) == 3
    for rec in records:
        assert set(rec["prompts"]) == set(rec["outputs"]) and all(p.startswith("<chat>") for p in
                                                                  rec["prompts"].values())
