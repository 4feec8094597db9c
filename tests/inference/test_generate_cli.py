"""`python -m oq2vl_jax.generate` through its real entry point: single prompt, bad input, batch mode with resume, and
(slow) the README's demo caption after the CPU demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fixtures.paths import REPO
from fixtures.inference import run_generate_cli, tiny_config, tiny_tokenizer
from oq2vl_jax import checkpoint_io, generate
from oq2vl_jax.text import contract as contract_lib, tokens

ROOT = REPO


def run_cli(*args, cwd=ROOT, timeout=600):
    return run_generate_cli(*args, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny random checkpoint as `convert import` lays it out (params + prepared tokenizer)."""
    import jax
    from flax import nnx

    from oq2vl_jax.models.params import param_tree
    from oq2vl_jax.models.vlm import VLM

    root = tmp_path_factory.mktemp("gen")
    config = tiny_config(4)
    tok = str(root / "tok")
    tokens.prepare(tiny_tokenizer(str(root / "tok_src")), tok, vocab_size=config.llm.vocab_size)
    params = jax.tree.map(np.asarray, param_tree(VLM(config, rngs=nnx.Rngs(0))))
    out = str(root / "ckpt")
    checkpoint_io.save_params(out, params, config, tokenizer_dir=tok,
                              **checkpoint_io.contract_meta(contract_lib.TRAINED_DEFAULT))
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "a.png")
    return out


def test_single_prompt_json_and_bad_input(ckpt):
    image = os.path.join(os.path.dirname(ckpt), "a.png")
    proc = run_cli("--ckpt", ckpt, "--image", image, "--prompt", "", "--template", "base", "--max-new-tokens", "3",
                   "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["finish_reason"] in ("length", "stop") and 0 <= answer["num_tokens"] <= 3
    bad = run_cli("--ckpt", ckpt, "--image", image + ".missing", "--prompt", "x")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--image" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_batch_mode_resumes_and_refuses_other_answers(ckpt, tmp_path, capsys):
    image = os.path.join(os.path.dirname(ckpt), "a.png")
    os.symlink(image, tmp_path / "img.png")
    lines = [{"id": "a", "image": "img.png", "prompt": ""}, {"id": "b", "prompt": "hello"},
             {"id": "c", "images": ["img.png", "img.png"], "text": "two"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = str(tmp_path / "out.jsonl")
    args = ["--ckpt", ckpt, "--input", str(tmp_path / "in.jsonl"), "--out", out, "--template", "base",
            "--max-new-tokens", "4", "--batch-size", "2"]
    assert generate.main(args) == 0
    first = open(out).read().splitlines()
    assert [json.loads(x)["id"] for x in first] == ["a", "b", "c"]
    # an interrupted run: the last answer half-written -> the rerun drops it and redoes only that prompt
    with open(out, "w") as f:
        f.write("\n".join(first[:2]) + "\n" + first[2][:15])
    assert generate.main(args) == 0
    assert open(out).read().splitlines() == first
    assert generate.main(args) == 0 and "already answered" in capsys.readouterr().out
    # answers of other input are refused, the file untouched
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": "other"}) + "\n")
    assert generate.main(args) == 2
    assert open(out).read().splitlines() == first
    (tmp_path / "in.jsonl").write_text("{not json\n")
    assert generate.main(args) == 2 and "not JSON" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_demo_caption(tmp_path):
    """README: after the CPU demo, the held-out image's caption names its colour, shape and position."""
    from oq2vl_jax.demo import shapes as demo

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)  # the demo as a user runs it
    train = subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", "configs/demo.py", "--workdir",
                            str(tmp_path / "demo")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert train.returncode == 0, train.stderr[-3000:]
    subprocess.run(["tar", "-xf", str(tmp_path / "demo/demo_data/eval/00000.tar"), "-C", str(tmp_path),
                    "eval000002.jpg"], check=True)
    proc = run_cli("--ckpt", str(tmp_path / "demo/checkpoints"), "--image", str(tmp_path / "eval000002.jpg"),
                   "--template", "base", "--prompt", "")
    assert proc.returncode == 0, proc.stderr[-2000:]
    caption = proc.stdout.strip().splitlines()[-1]
    truth = [json.loads(x) for x in open(tmp_path / "demo/demo_data/eval_attributes.jsonl")][2]
    named = demo.attributes_in_text(caption)
    assert all(named.values()), caption  # a colour, a shape and a position are named
    assert named["colour"] == truth["colour"] and named["position"] == truth["position"], (caption, truth)
