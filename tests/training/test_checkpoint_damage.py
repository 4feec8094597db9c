"""A damaged newest checkpoint (truncated params, missing data state, bad meta, missing optimizer state, bad train
info): the run resumes from the newest intact step, the damaged one moved to checkpoints/corrupt/<step> with a
warning naming it; when no step is intact, one clear error and nothing moved. `convert export` of a damaged step is
one line too. The whole path through the CLI is in a slow test."""

import os
import shutil
import subprocess

import jax
import pytest

from oq2vl_jax import checkpoint_io
from oq2vl_jax.convert.__main__ import main as convert_main
from oq2vl_jax.errors import UserError
from oq2vl_jax import parallel
from oq2vl_jax.training import loop, metrics
from oq2vl_jax.training.checkpoint import CORRUPT_SUBDIR, Checkpointer
from fixtures.training import tiny_config
from fixtures.training import FAST_COMPILE, synthetic_factory



def small_config():
    config = tiny_config(num_steps=4, eval_every=0, global_batch_rows=4, micro_batches=1)
    config.mesh.update(data=1, fsdp=1)
    config.checkpoint.update(every_steps=2, keep=3, async_save=False)
    return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> str:
    """A 4-step run with checkpoints at steps 2 and 4."""
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.run(small_config(), workdir, devices=jax.devices()[:1], data_factory=synthetic_factory(),
             compiler_options=FAST_COMPILE)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "tokenizer"] or \
        sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    return workdir


def damage(step_dir: str, case: str) -> None:
    if case == "truncated_params":
        for root, _, files in os.walk(os.path.join(step_dir, "params")):
            for name in files:
                path = os.path.join(root, name)
                if os.sep + "d" + os.sep in path + os.sep and os.path.getsize(path) > 64:  # the array data files
                    os.truncate(path, os.path.getsize(path) // 2)
    elif case == "missing_data_state":
        os.remove(os.path.join(step_dir, "data", "process_0-of-1.json"))
    elif case == "bad_meta":
        with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
            f.write("{not json")
    elif case == "missing_opt_state":
        shutil.rmtree(os.path.join(step_dir, "opt_state"))
    elif case == "bad_train_info":
        open(os.path.join(step_dir, "train", "metadata"), "w").close()
    else:
        raise ValueError(case)


CASES = ("truncated_params", "missing_data_state", "bad_meta", "missing_opt_state", "bad_train_info")


def copy_run(finished_run: str, tmp_path) -> str:
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    return workdir


@pytest.mark.parametrize("case", CASES)
def test_damaged_newest_step_falls_back_to_the_newest_intact(finished_run, tmp_path, case, monkeypatch):
    from oq2vl_jax.training import checkpoint as checkpoint_lib

    warnings = []  # absl's warnings, whatever handlers earlier tests left on its logger
    monkeypatch.setattr(checkpoint_lib.logging, "warning", lambda msg, *args: warnings.append(msg % args))
    workdir = copy_run(finished_run, tmp_path)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    damage(os.path.join(ckpt_dir, "4"), case)
    config = small_config()
    mesh = parallel.build_mesh(config.mesh, jax.devices()[:1])
    checkpointer = Checkpointer(ckpt_dir, keep=3, async_save=False)
    try:
        step, restored = loop.restore_newest(config, checkpointer, mesh)
        assert step == 2 and int(jax.device_get(restored[4].step)) == 2
        assert checkpointer.all_steps() == [2]
    finally:
        checkpointer.close()
    assert os.path.isdir(os.path.join(ckpt_dir, CORRUPT_SUBDIR, "4"))  # moved aside, not deleted
    assert not os.path.exists(os.path.join(ckpt_dir, "4"))
    assert any("step 4 is damaged" in w and os.path.join(CORRUPT_SUBDIR, "4") in w for w in warnings), warnings


def test_no_intact_step_is_one_error_and_nothing_moves(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    damage(os.path.join(ckpt_dir, "4"), "missing_opt_state")
    damage(os.path.join(ckpt_dir, "2"), "bad_meta")
    config = small_config()
    with pytest.raises(UserError, match=r"no checkpoint in .* restores \(step 4: .*; step 2: .*\)") as error:
        loop.run(config, workdir, devices=jax.devices()[:1], data_factory=synthetic_factory(),
                 compiler_options=FAST_COMPILE)
    assert "\n" not in str(error.value)
    assert sorted(s for s in os.listdir(ckpt_dir) if s.isdigit()) == ["2", "4"]
    assert not os.path.exists(os.path.join(ckpt_dir, CORRUPT_SUBDIR))


def test_convert_export_of_a_damaged_step_is_one_line(finished_run, tmp_path, capsys):
    workdir = copy_run(finished_run, tmp_path)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    damage(os.path.join(ckpt_dir, "4"), "truncated_params")
    code = convert_main(["export", "--ckpt", ckpt_dir, "--to", "hf-qwen2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "step 4 is damaged" in err and "--step" in err, err
    assert not os.path.exists(tmp_path / "out")
    # --out naming a file
    open(tmp_path / "a_file", "w").close()
    code = convert_main(["export", "--ckpt", ckpt_dir, "--to", "hf-qwen2", "--out", str(tmp_path / "a_file")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file" in err and err.count("\n") == 1, err
    assert checkpoint_io.resolve_step(ckpt_dir) == 4  # the export never moves anything


# ------------------------------------------------------------------------------------------------------------------
# Through the CLI


@pytest.mark.slow  # two CLI runs on the demo data (~1 min each on 2 cores)
def test_cli_resumes_past_a_truncated_newest_step(tmp_path):
    from fixtures.training import cli, cli_env

    data_dir, workdir = str(tmp_path / "demo_data"), str(tmp_path / "run")
    args = ["--config.train.num_steps=4", "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3"]
    first = subprocess.run(cli(workdir, data_dir) + args, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    damage(os.path.join(workdir, "checkpoints", "4"), "truncated_params")
    again = subprocess.run(cli(workdir, data_dir) + args[1:] + ["--config.train.num_steps=6"], env=cli_env(),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    assert "step 4 is damaged" in again.stderr and os.path.join("checkpoints", CORRUPT_SUBDIR, "4") in again.stderr
    assert "steps 2 -> 6 (num_steps)" in again.stdout
    assert [r["step"] for r in metrics.read_metrics(workdir) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", CORRUPT_SUBDIR, "4"))
