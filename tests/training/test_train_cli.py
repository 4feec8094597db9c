"""`python -m oq2vl_jax.train` as a user types it: every mistake in the flags, the config fields or the workdir is
one `error:` line with exit status 2, before anything is compiled (most before JAX is even imported); a second
trainer on a busy workdir is refused; a SIGTERM in the first moments of start-up stops the run cleanly."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from fixtures.paths import REPO

DEMO = os.path.join(REPO, "configs", "demo.py")


def train_cli(*args: str, workdir: str | None = None, config: str = DEMO) -> list[str]:
    cmd = [sys.executable, "-m", "oq2vl_jax.train", "--config", config]
    return cmd + (["--workdir", workdir] if workdir else []) + list(args)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for text in expected:
        assert text in errors[0], errors[0]


def _readonly_dir(tmp_path) -> str:
    path = tmp_path / "readonly"
    path.mkdir()
    path.chmod(0o555)
    if os.access(path, os.W_OK):  # root writes anywhere: a path under /proc cannot be created even by root
        return "/proc/oq2vl_jax_workdir"
    return str(path / "run")


@pytest.mark.parametrize("args, expected", [
    (["--config", "configs/nope.py"], ["--config configs/nope.py", "no such config file"]),
    (["--config.train.num_stepz=3"], ["--config.train.num_stepz", 'did you mean "num_steps"']),
    (["--config.train.log_every=abc"], ["--config.train.log_every=abc"]),
    (["--config.train.log_every=0"], ["train.log_every must be >= 1", "--config.train.log_every"]),
    (["--config.checkpoint.every_steps=0"], ["checkpoint.every_steps must be >= 1"]),
    (["--config.checkpoint.keep=0"], ["checkpoint.keep must be >= 1"]),
    (["--config.optim.lr=-0.001"], ["optim.lr must be >= 0"]),
    (["WORKDIR_IS_A_FILE"], ["is a file, not a directory"]),
    (["WORKDIR_READ_ONLY"], ["cannot be written"]),
])
def test_mistakes_are_one_line_with_exit_status_2(tmp_path, args, expected):
    workdir = str(tmp_path / "run")
    if args == ["WORKDIR_IS_A_FILE"]:
        args, workdir = [], str(tmp_path / "a_file")
        open(workdir, "w").close()
    elif args == ["WORKDIR_READ_ONLY"]:
        args, workdir = [], _readonly_dir(tmp_path)
    proc = subprocess.run(train_cli(*args, workdir=workdir), env=env(), capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert_one_line_error(proc, *expected)
    assert not os.path.exists(os.path.join(workdir, "demo_data")) if os.path.isdir(workdir) else True


def test_a_second_trainer_on_a_busy_workdir_is_refused(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    # the lock of a running trainer: this test process stands in for it
    (workdir / "train.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                    "started": "now"}))
    proc = subprocess.run(train_cli(workdir=str(workdir)), env=env(), capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "another trainer is running in this workdir", f"pid {os.getpid()}")
    assert not (workdir / "demo_data").exists()  # refused before touching anything
    assert json.loads((workdir / "train.lock").read_text())["pid"] == os.getpid()  # not taken from its owner


def _catches_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(mask >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the signal mask from /proc (Linux)")
def test_sigterm_during_start_up_stops_cleanly(tmp_path):
    proc = subprocess.Popen(train_cli(workdir=str(tmp_path / "run")), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches_sigterm(proc.pid):  # the handler is the first thing the CLI installs
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    assert "stopped by SIGTERM during start-up: nothing trained, nothing saved" in out
    assert not os.path.exists(tmp_path / "run" / "train.lock")  # released


@pytest.mark.slow  # one CLI run on the demo data to a few steps (~1 min on 2 cores)
def test_ctrl_c_stops_after_the_step_with_a_checkpoint(tmp_path):
    from fixtures.training import cli, cli_env, losses, wait_for_step

    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(cli(workdir, str(tmp_path / "demo_data")), env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_step(proc, workdir, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    stopped_at = max(losses(workdir))
    assert "(sigint)" in out and f"checkpoint: {workdir}/checkpoints/{stopped_at}" in out
    assert os.path.isdir(os.path.join(workdir, "checkpoints", str(stopped_at)))
    assert not os.path.exists(os.path.join(workdir, "train.lock"))
