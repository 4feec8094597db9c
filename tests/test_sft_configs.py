"""The SFT configs: the paper's recipe values, a dry run of each through the real CLI (with the documented path
overrides parsed by the flag parser), and start-up errors that name the field to set."""

import os
import re
import runpy
import subprocess
import sys

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.training.dry_run import dry_run
from oq2vl_jax.training import setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
    return runpy.run_path(os.path.join(REPO, "configs", f"{name}.py"))["get_config"]()


@pytest.mark.parametrize("name, steps, epochs", [("sft_llava665k", 4500, 1), ("sft_mammoth", 150000, -1)])
def test_sft_configs_are_the_papers_recipe(name, steps, epochs):
    c = load(name)
    assert (c.init.source, c.model.tokens_per_image, c.train.stage) == ("checkpoint", 729, "pretrain")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_ratio, c.optim.clip_norm) == (2e-5, 0.1, 0.03, 1.0)
    assert (c.data.row_length, c.data.packing, c.data.chat_format) == (4096, "ffd_fill", "open_qwen2vl")
    assert (c.train.num_steps, c.data.num_epochs, c.train.global_batch_rows) == (steps, epochs, 32)
    assert c.hardware.num_devices == 8 and c.model.compute_dtype == "bfloat16"


def test_sft_dry_run_through_the_cli(tmp_path):
    """The command docs/sft.md shows, with --dry_run: the path overrides go through the real flag parser."""
    name = "sft_llava665k"
    source = '({"kind": "llava", "path": "/data/llava/llava_v1_5_mix665k.json", "image_root": "/data/llava/images"},)'
    cmd = [sys.executable, "-m", "oq2vl_jax.train", f"--config={REPO}/configs/{name}.py", "--dry_run",
           f"--workdir={tmp_path}", "--config.init.init_from=runs/pretrain/checkpoints",
           f"--config.data.sources={source}", "--config.data.chat_format=qwen2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "dry run: 8 devices" in out.stdout and "stage pretrain" in out.stdout
    assert "4 rows of 4096 tokens; 1 micro-batches per update of 32 rows" in out.stdout
    total = float(re.search(r"total\s+([\d.]+)", out.stdout).group(1))
    assert 0.5 < total < 40


def test_mammoth_dry_run():
    report = dry_run(load("sft_mammoth"), 0)
    assert "dry run: 8 devices" in report and "1.548B trained" in report


def test_sft_start_up_errors_name_the_field(tmp_path):
    config = load("sft_llava665k")
    config.data.sources = ({"kind": "llava", "path": str(tmp_path)},)
    with pytest.raises(UserError, match="--config.init.init_from"):
        setup.validate_paths(config)


def test_demo_sft_config():
    c = load("demo_sft")
    assert (c.init.source, c.init.init_from, c.model.tokens_per_image) == ("checkpoint", "runs/demo/checkpoints", 64)
    demo = load("demo")
    assert c.model.vision_overrides == demo.model.vision_overrides and c.data.image_size == demo.data.image_size
    assert c.demo_sft.text_only_every == 6 and "demo" not in c
