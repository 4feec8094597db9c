"""The demo config's data (oq2vl_jax/demo/setup.py): used only when the user gave none, switchable off, and never
written over a directory the project did not create. The CLI cases run the real trainer entry point; each stops
before any compile."""

import os
import subprocess
import sys

import ml_collections
import pytest

from fixtures.paths import REPO
from oq2vl_jax.demo import setup as demo_setup
from oq2vl_jax.errors import UserError



def train_cli(workdir, *overrides):
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.train", "--config", os.path.join(REPO, "configs", "demo.py"),
                           "--workdir", str(workdir), *overrides], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_refuses_a_user_directory_and_deletes_nothing(tmp_path):
    user_dir = tmp_path / "my_shards"
    user_dir.mkdir()
    (user_dir / "00000.tar").write_bytes(b"precious")
    proc = train_cli(tmp_path / "run", f"--config.demo.data_dir={user_dir}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(user_dir) in errors[0] and "refusing" in errors[0]
    assert "Traceback" not in proc.stderr
    assert (user_dir / "00000.tar").read_bytes() == b"precious" and os.listdir(user_dir) == ["00000.tar"]
    assert [p for p in os.listdir(tmp_path) if p != "run"] == ["my_shards"]  # no temporary directory left


def test_cli_uses_the_users_sources_not_the_demo_data(tmp_path):
    proc = train_cli(tmp_path / "run", '--config.data.sources=({"kind": "webdataset", "path": "/nonexistent-oq2vl"},)')
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "data.sources[0].path: '/nonexistent-oq2vl' does not exist" in proc.stderr
    assert "the demo data is not used" in proc.stderr
    assert not os.path.exists(tmp_path / "run" / "demo_data")


def test_cli_demo_block_switched_off(tmp_path):
    proc = train_cli(tmp_path / "run", "--config.demo.enabled=False")
    assert proc.returncode == 2 and "data.sources is empty" in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "demo_data")


def demo_config(data_dir="", **data):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict(dict(sources=(), eval_sources=(), tokenizer_dir="", image_size=16))
    c.data.update(data)
    c.demo = ml_collections.ConfigDict(dict(enabled=True, data_dir=data_dir, num_train=4, num_eval=2, seed=0))
    return c


def test_writes_once_fills_only_empty_fields_and_reuses(tmp_path):
    config = demo_config(tokenizer_dir="/my/tokenizer")
    paths = demo_setup.prepare_demo_data(config, str(tmp_path))
    data_dir = str(tmp_path / "demo_data")
    assert config.data.sources[0]["path"] == paths["train"] == os.path.join(data_dir, "train")
    assert config.data.eval_sources[0]["path"] == os.path.join(data_dir, "eval")
    assert config.data.tokenizer_dir == "/my/tokenizer"  # the user's
    assert sorted(os.listdir(tmp_path)) == ["demo_data"]
    stamp = os.stat(os.path.join(data_dir, demo_setup.DEMO_PATHS_FILE)).st_mtime_ns
    again = demo_setup.prepare_demo_data(demo_config(), str(tmp_path))
    assert again == paths and os.stat(os.path.join(data_dir, demo_setup.DEMO_PATHS_FILE)).st_mtime_ns == stamp


def test_an_empty_directory_is_used_and_a_file_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_setup.prepare_demo_data(demo_config(str(empty)), str(tmp_path))["train"] == str(empty / "train")
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(UserError, match=f"{a_file} exists and is not a directory"):
        demo_setup.prepare_demo_data(demo_config(str(a_file)), str(tmp_path))
    assert a_file.read_text() == "mine"


def test_a_foreign_marker_is_not_trusted(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / demo_setup.DEMO_PATHS_FILE).write_text('{"something": "else"}')
    with pytest.raises(UserError, match="holds no demo data"):
        demo_setup.prepare_demo_data(demo_config(str(tmp_path / "d")), str(tmp_path))
