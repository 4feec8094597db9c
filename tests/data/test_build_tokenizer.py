"""`python -m oq2vl_jax.data.build_tokenizer`: a tokenizer from one's own shards, through the real command."""

import os
import subprocess
import sys

import pytest

from fixtures.paths import REPO
from fixtures.data import write_numbered_shards
from oq2vl_jax.text.documents import TextEncoder, caption_document
from oq2vl_jax.text.tokens import load_tokenizer



def cli(*args):
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.data.build_tokenizer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_builds_a_loadable_tokenizer_from_shards_and_refuses_a_used_directory(tmp_path):
    shards = write_numbered_shards(str(tmp_path / "shards"), 40, shard_size=10)
    out = tmp_path / "tok"
    proc = cli(os.path.join(shards, "{00000..00002}.tar"), shards + "/00003.tar", "--out", str(out),
               "--vocab-size", "600")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--config.data.tokenizer_dir={out}" in proc.stdout
    tokenizer = load_tokenizer(str(out))
    encoder = TextEncoder.from_tokenizer(tokenizer)
    assert tokenizer.decode(encoder.encode("sample 17 is a red circle")) == "sample 17 is a red circle"
    assert len(encoder.encode("sample 17 is a red circle")) < len("sample 17 is a red circle") // 2  # merges learned
    assert caption_document(tokenizer, "sample 3", 4).length > 4

    again = cli(shards, "--out", str(out), "--vocab-size", "600")
    assert again.returncode == 2 and str(out) in again.stderr and "refusing" in again.stderr
    assert "Traceback" not in again.stderr
    assert sorted(os.listdir(tmp_path)) == ["shards", "tok"]  # no temporary directory left


def _build(tmp_path, shards_dir: str):
    out = str(tmp_path / "tok")
    proc = cli(shards_dir, "--out", out, "--vocab-size", "600")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_built_tokenizer_meets_what_the_trainer_requires(tmp_path):
    """True/False/Yes/No are single tokens even when the captions never say them (the trainer's check_qwen2 and the
    checkpoint copy `prepare` pass), other words keep their learned tokens, and the size stays within --vocab-size."""
    from oq2vl_jax.text import tokens

    shards = write_numbered_shards(str(tmp_path / "shards"), 40, shard_size=10)
    out = _build(tmp_path, shards)
    tok = tokens.open_tokenizer(out)
    tokens.check_qwen2(tok, out)  # raised "splits ['True', 'False', 'Yes', 'No'] into several tokens" before
    assert all(len(tok.encode(w, add_special_tokens=False)) == 1 for w in tokens.SINGLE_TOKEN_WORDS)
    assert tok.decode(tok.encode("No, Nothing is True")) == "No, Nothing is True"
    ids = tokens.prepare(out, str(tmp_path / "copy"), vocab_size=600)
    assert ids["size"] <= 600


@pytest.mark.slow  # the documented chain through the real commands: build_tokenizer, then two training steps (~1 min)
def test_build_tokenizer_then_train(tmp_path):
    shards = write_numbered_shards(str(tmp_path / "shards"), 40, shard_size=10)
    out = _build(tmp_path, shards)
    workdir = str(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    proc = subprocess.run(
        [sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs", "demo.py"),
         "--workdir", workdir, f"--config.data.sources=({{\"kind\": \"webdataset\", \"path\": \"{shards}\"}},)",
         f"--config.data.tokenizer_dir={out}", "--config.train.num_steps=2", "--config.train.global_batch_rows=2",
         "--config.data.row_length=64", "--config.train.eval_every=0", "--config.log.tensorboard=False",
         "--config.evals=()", f"--config.demo.data_dir={tmp_path / 'demo'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "tokenizer", "tokenizer.json"))
