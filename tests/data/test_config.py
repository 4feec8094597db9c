"""The data config schema (oq2vl_jax/data/config.py): every config accepts data sources from the command line, parsed
by the real flag parser (config_flags), and the trainer's CLI applies them."""

import os
import subprocess
import sys

import pytest

from fixtures.configs import parse
from fixtures.paths import REPO
from oq2vl_jax.data.config import default_data_config

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "configs")) if f.endswith(".py") and f != "base.py")
SOURCES = '({"kind": "webdataset", "path": "/data/x"}, {"kind": "webdataset", "path": "/data/y", "weight": 2.0})'


def test_every_overridable_source_field_is_a_tuple():
    cfg = default_data_config()
    assert isinstance(cfg.sources, tuple) and isinstance(cfg.eval_sources, tuple)


@pytest.mark.parametrize("name", CONFIGS)
def test_sources_override_parses_with_every_config(name):
    config = parse(name, f"--config.data.sources={SOURCES}", '--config.data.eval_sources=({"kind": "webdataset", "path": "/data/x"},)')
    assert [s["path"] for s in config.data.sources] == ["/data/x", "/data/y"]
    assert config.data.sources[1]["weight"] == 2.0
    assert [s["path"] for s in config.data.eval_sources] == ["/data/x"]


def test_trainer_cli_applies_the_sources_override():
    """Through the real entry point: the run stops at the path check (exit 2, one line) naming the given path."""
    proc = subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs", "a100x8.py"),
                           "--workdir", "/nonexistent-oq2vl/run", "--config.init.source=random",
                           "--config.data.sources=" + '({"kind": "webdataset", "path": "/nonexistent-oq2vl/shards"},)'],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.sources[0].path: '/nonexistent-oq2vl/shards' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
