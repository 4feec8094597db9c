"""End to end through the real entry point and the real inference API: a tiny random VLM checkpoint evaluated on
the demo VQA task writes predictions, summary and report; a killed run (truncated predictions with a partial last
line) rerun gives the identical summary."""

import json
import os
import subprocess
import sys

import pytest

from fixtures.paths import REPO
from fixtures.eval_model import write_tiny_checkpoint
from oq2vl_jax.demo.shapes import write_demo_dataset



def _evaluate(*args):
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_backend_optimization_level=0")
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.evaluate", *args], capture_output=True, text=True,
                          env=env)


@pytest.mark.slow
def test_demo_task_end_to_end_and_resume(tmp_path):
    ckpt = write_tiny_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "tok"))
    data = str(tmp_path / "data")
    write_demo_dataset(data, num_train=1, num_eval=1, image_size=32, num_sft=10, with_tokenizer=False)
    out = str(tmp_path / "out")
    args = ["--ckpt", ckpt, "--task", "demo", "--data", data, "--out", out, "--batch", "4"]
    r = _evaluate(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(os.path.join(out, "summary.json")) as f:
        first = json.load(f)
    assert first["tasks"]["demo"]["scored"] == 10 and first["tasks"]["demo"]["complete"]
    assert "| demo | 10/10 |" in open(os.path.join(out, "report.md")).read()
    pred = os.path.join(out, "demo", "predictions.jsonl")
    lines = open(pred, "rb").read().split(b"\n")
    assert len(lines) == 11
    with open(pred, "wb") as f:  # killed while writing the 5th record
        f.write(b"\n".join(lines[:4]) + b"\n" + lines[4][:20])
    r = _evaluate(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "6 to run" in r.stderr
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f) == first
    assert open(pred, "rb").read().split(b"\n") == lines  # same records, same order
