"""The run directory's checks and its lock (oq2vl_jax/training/workdir.py)."""

import json
import os
import socket
import subprocess
import sys

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.training import workdir


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it now (pids are not reused this quickly)


def test_lock_is_exclusive_taken_once_and_released(tmp_path):
    path = workdir.acquire(str(tmp_path))
    owner = json.loads(open(path).read())
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(UserError, match=f"another trainer is running in this workdir \\(pid {os.getpid()}"):
        workdir.acquire(str(tmp_path))  # a run takes it once (loop.run); a second take is refused like any other
    assert os.path.exists(path)
    workdir.release(path)
    assert not os.path.exists(path)


def test_a_running_trainer_keeps_its_lock(tmp_path):
    lock = tmp_path / workdir.LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}))
    with pytest.raises(UserError, match=f"another trainer is running in this workdir \\(pid {os.getppid()}"):
        workdir.acquire(str(tmp_path))
    assert json.loads(lock.read_text())["pid"] == os.getppid()


def test_a_stale_lock_is_taken_over(tmp_path, monkeypatch):
    warned = []  # absl's warnings, whatever handlers earlier tests left on its logger
    monkeypatch.setattr(workdir.logging, "warning", lambda msg, *args: warned.append(msg % args))
    lock = tmp_path / workdir.LOCK_FILE
    dead = _dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "before the crash"}))
    with workdir.locked(str(tmp_path)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    assert any("stale lock" in w and f"pid {dead}" in w for w in warned), warned
    lock.write_text("{half a lo")  # a trainer killed while writing it
    with workdir.locked(str(tmp_path)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused_with_the_way_out(tmp_path):
    (tmp_path / workdir.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "another-host", "started": "x"}))
    with pytest.raises(UserError, match="another-host.*delete the lock file"):
        workdir.acquire(str(tmp_path))


def test_check_workdir(tmp_path):
    assert workdir.check_workdir(str(tmp_path / "new" / "run")) == str(tmp_path / "new" / "run")
    assert os.path.isdir(tmp_path / "new" / "run") and os.listdir(tmp_path / "new" / "run") == []
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        workdir.check_workdir(str(tmp_path / "file"))
