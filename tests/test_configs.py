"""The training configs: the paper's recipe values, dry runs of the hardware configs on their simulated device counts
(abstract state and shardings only), and start-up errors that name the field to set."""

import os
import re
import runpy
import subprocess
import sys

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.training import setup
from oq2vl_jax.training.dry_run import dry_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARDWARE = {"a100x8": 8, "h100x8": 8, "tpu_v4_64": 32, "tpu_v5p_128": 64}


def load(name: str):
    return runpy.run_path(os.path.join(REPO, "configs", f"{name}.py"))["get_config"]()


def test_a100x8_is_the_papers_recipe():
    c = load("a100x8")
    assert (c.model.llm, c.model.vision, c.model.tokens_per_image) == ("qwen2.5-1.5b", "siglip-so400m-384", 144)
    assert (c.data.row_length, c.data.image_size, c.train.global_batch_rows, c.train.stage) == (4096, 384, 256,
                                                                                               "pretrain")
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_ratio, c.optim.clip_norm) == (5e-5, 0.01, 0.03, 1.0)
    assert (c.optim.b1, c.optim.b2, c.optim.eps) == (0.9, 0.999, 1e-8)
    assert c.init.source == "pretrained" and c.model.compute_dtype == "bfloat16"


@pytest.mark.parametrize("name, devices", sorted(HARDWARE.items()))
def test_hardware_configs_pass_a_dry_run(name, devices):
    config = load(name)
    report = dry_run(config, 0)
    assert f"dry run: {devices} devices" in report and "fsdp" in report
    total = float(re.search(r"total\s+([\d.]+)", report).group(1))
    assert 0.5 < total < config.hardware.device_memory_gib
    assert "1.548B trained" in report and "0.398B frozen (bfloat16)" in report


def test_dry_run_rejects_a_mesh_that_does_not_divide():
    config = load("tpu_v4_64")
    with pytest.raises(UserError, match="global_batch_rows"):
        dry_run(config, 12)  # 256 rows / 4 micro-batches do not split over 12 chips
    config.mesh.data = 3
    with pytest.raises(UserError, match="--config.mesh"):
        dry_run(config, 32)


def test_missing_paths_name_the_field(tmp_path):
    config = load("a100x8")
    with pytest.raises(UserError, match="data.sources"):
        setup.validate_paths(config)
    config.data.sources = ({"kind": "webdataset", "path": str(tmp_path)},)
    with pytest.raises(UserError, match="--config.init.llm_dir"):
        setup.validate_paths(config)
    config.init.update(llm_dir=str(tmp_path), vision_src=str(tmp_path / "missing"))
    with pytest.raises(UserError, match="--config.init.vision_src"):
        setup.validate_paths(config)


def test_demo_config():
    c = load("demo")
    assert c.init.source == "random" and c.train.stage == "full" and c.model.compute_dtype == "float32"
    assert c.demo.score_attributes and c.train.num_steps > 0


def test_cli_dry_run_with_overrides():
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs",
                                                                                               "h100x8.py"),
                           "--dry_run", "--config.train.micro_batches=4", "--config.mesh.fsdp=4",
                           "--config.mesh.data=-1"],
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mesh {'data': 2, 'fsdp': 4, 'tensor': 1}" in proc.stdout
    assert "per micro-batch and device: 8 rows" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs",
                                                                                              "h100x8.py"),
                          "--dry_run", "--config.mesh.data=3"],
                         env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--config.mesh" in bad.stderr and "Traceback" not in bad.stderr
