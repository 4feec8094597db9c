"""The demo run entirely in an S3 bucket (a real S3 server, moto, on 127.0.0.1), through the real entry points:
shards, workdir, checkpoints, metrics, evaluation outputs.

CI: the documented commands as typed (train a few steps into a bucket workdir, evaluate and export from its
checkpoint). Slow: trained from the bucket's shards into a bucket workdir, killed (-9), resumed; the losses equal bit
for bit those of an uninterrupted run into a local workdir on the same shards; then evaluated and exported."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from oq2vl_jax.storage import paths
from oq2vl_jax.training import metrics
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)
from fixtures.paths import REPO
from fixtures.training import CLI_STEPS, cli, cli_env, losses, wait_for_step

# the documented demo command, made quick: a few steps of a tiny set (the docs test's settings)
DEMO_FAST = ("--config.train.num_steps=2", "--config.train.global_batch_rows=4", "--config.train.log_every=1",
             "--config.train.eval_every=0", "--config.checkpoint.every_steps=2", "--config.demo.num_train=32",
             "--config.demo.num_eval=4", "--config.data.row_length=64", "--config.data.pack_buffer=32",
             "--config.log.tensorboard=False")


def test_demo_in_a_bucket_through_the_documented_entry_points(tmp_path, bucket, monkeypatch, capsys):
    """docs/training.md's three bucket commands, as typed: train (a few steps), evaluate, export."""
    from oq2vl_jax import evaluate
    from oq2vl_jax.convert import __main__ as convert_cli

    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))
    workdir = f"{bucket}/runs/demo"
    trained = subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", "configs/demo.py", "--workdir",
                              workdir, *DEMO_FAST], env=cli_env(), capture_output=True, text=True, timeout=600,
                             cwd=REPO)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr and f"checkpoint: {workdir}/checkpoints/2" in trained.stdout
    assert "held-out attributes, with images" in trained.stdout
    assert [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r] == [1, 2]
    assert paths.exists(f"{workdir}/attribute_scores.json") and not paths.exists(f"{workdir}/train.lock")

    assert evaluate.main(["--ckpt", workdir, "--task", "demo", "--data", f"{workdir}/demo_data", "--out",
                          f"{workdir}/eval", "--limit", "2", "--batch", "2"]) == 0
    assert json.loads(paths.read_bytes(f"{workdir}/eval/summary.json"))["tasks"]["demo"]["items"] == 2
    out_dir = str(tmp_path / "qwen2")
    assert convert_cli.main(["export", "--ckpt", f"{workdir}/checkpoints", "--to", "hf-qwen2", "--out", out_dir]) == 0
    assert f"read {workdir}/checkpoints step 2" in capsys.readouterr().out
    assert os.path.isfile(os.path.join(out_dir, "model.safetensors"))


@pytest.mark.slow  # four CLI start-ups (~3 minutes on 2 cores)
def test_demo_in_a_bucket_killed_resumed_bit_exactly_then_evaluated_and_exported(tmp_path, bucket, monkeypatch):
    monkeypatch.setenv("OQ2VL_CACHE", str(tmp_path / "cache"))  # local copies and shard indexes of this test only
    from oq2vl_jax.demo import setup as demo_setup

    data_dir, workdir, reference_dir = f"{bucket}/demo_data", f"{bucket}/runs/demo", str(tmp_path / "reference")
    demo_setup.write_demo_dir(data_dir, num_train=256, num_eval=16, image_size=32, seed=0)  # shards in the bucket
    assert paths.glob(f"{data_dir}/train/*.tar")
    env = cli_env()
    reference = subprocess.Popen(cli(reference_dir, data_dir), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    first = subprocess.Popen(cli(workdir, data_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    wait_for_step(first, workdir, 4, timeout=300.0)  # metrics in a bucket: synced at each log step
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert paths.exists(f"{workdir}/train.lock")  # left behind by kill -9: taken over below (same host, pid gone)

    second = subprocess.run(cli(workdir, data_dir), env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Traceback" not in second.stderr
    assert f"-> {CLI_STEPS} (num_steps)" in second.stdout
    assert f"checkpoint: {workdir}/checkpoints/{CLI_STEPS}" in second.stdout
    assert not paths.exists(f"{workdir}/train.lock")
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    expected, got = losses(reference_dir), losses(workdir)
    assert sorted(got) == list(range(1, CLI_STEPS + 1)) == sorted(expected)
    assert got == expected  # bit-exact: same shards read from the bucket, same batches after the resume
    steps = sorted(int(n) for n in paths.listdir(f"{workdir}/checkpoints") if n.isdigit())
    assert steps[-1] == CLI_STEPS and all(paths.exists(f"{workdir}/checkpoints/{s}/commit_success.txt")
                                          for s in steps)

    evaluated = subprocess.run(
        [sys.executable, "-m", "oq2vl_jax.evaluate", "--ckpt", workdir, "--task", "demo", "--data", data_dir,
         "--out", f"{workdir}/eval", "--limit", "4", "--batch", "4"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    summary = json.loads(paths.read_bytes(f"{workdir}/eval/summary.json"))
    assert summary["run"]["ckpt"] == workdir and summary["tasks"]["demo"]["items"] == 4
    assert len(paths.read_text(f"{workdir}/eval/demo/predictions.jsonl").splitlines()) == 4

    out_dir = str(tmp_path / "qwen2")
    exported = subprocess.run(
        [sys.executable, "-m", "oq2vl_jax.convert", "export", "--ckpt", f"{workdir}/checkpoints", "--to", "hf-qwen2",
         "--out", out_dir], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert exported.returncode == 0, exported.stderr[-3000:]
    from safetensors.numpy import load_file

    from oq2vl_jax import checkpoint_io
    _, params, _ = checkpoint_io.load_params(f"{workdir}/checkpoints")
    weights = load_file(os.path.join(out_dir, "model.safetensors"))
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"], params["llm"]["embed"])
