"""The run directory: checked before anything heavy (a directory we can write), and locked for one trainer at a time.

The lock is WORKDIR/train.lock, created exclusively (O_EXCL) by process 0 and holding {"pid", "host", "started"}. It is
removed when the run ends, however it ends short of SIGKILL. A lock left by a trainer that died (kill -9, a crashed
machine) is taken over when it names this host and a pid that no longer runs a process; a lock from another host
cannot be checked from here, so the message says how to remove it once that trainer is known to be gone.

A workdir may be a bucket (gs://, s3://): the lock is then an object created by a conditional PUT (only if no object
of that name exists: S3 If-None-Match, GCS ifGenerationMatch=0), of which of two trainers starting at once exactly one
wins, as O_EXCL does on a disk (oq2vl_jax/storage/paths.py).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import tempfile
import uuid

from absl import logging

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths as storage

LOCK_FILE = "train.lock"


def check_workdir(workdir: str) -> str:
    """The absolute workdir (or bucket URI), created if missing; UserError when it is a file or cannot be written."""
    if storage.is_remote(workdir):
        return _check_bucket_workdir(storage.resolve(workdir))
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file, not a directory; choose a directory for the run")
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"--workdir {workdir} cannot be written ({e.strerror or e}); choose a writable "
                        "directory") from e
    return workdir


def _check_bucket_workdir(workdir: str) -> str:
    if workdir.count("/") < 3:
        raise UserError(f"--workdir {workdir}: give a prefix inside the bucket (e.g. {workdir.rstrip('/')}/runs/demo), "
                        "not the bucket itself")
    probe = storage.join(workdir, f".write_test_{uuid.uuid4().hex}")
    try:
        if storage.isfile(workdir):
            raise UserError(f"--workdir {workdir} is an object, not a prefix; choose a prefix for the run")
        storage.write_bytes(probe, b"")
        storage.remove(probe)
    except OSError as e:
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"--workdir {workdir} cannot be written ({reason}); check the bucket name, AWS_ENDPOINT_URL / "
                        "credentials (s3://) or application-default credentials (gs://)") from e
    return workdir


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has that pid
        return True
    return True


def _read(path: str) -> dict:
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return {}  # half-written by a trainer killed while taking it: treated as stale below


def _describe(owner: dict) -> str:
    return f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}, started {owner.get('started', '?')}"


def acquire(workdir: str) -> str:
    """Takes WORKDIR/train.lock for this process; returns its path. UserError when another trainer holds it (a run
    takes it once, in loop.run: a second take in the same process is refused like any other)."""
    path = storage.join(storage.resolve(workdir), LOCK_FILE)
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    for _ in range(2):
        if not storage.create_exclusive(path, json.dumps(mine).encode()):
            owner = _read(path)
            same_host = owner.get("host") == mine["host"]
            if owner and not same_host:
                raise UserError(f"{path} says another trainer uses this workdir ({_describe(owner)}); run one "
                                "trainer per workdir. If that trainer is gone, delete the lock file and rerun")
            if owner and _pid_running(int(owner.get("pid", -1))):
                raise UserError(f"another trainer is running in this workdir ({_describe(owner)}, lock {path}); "
                                "wait for it, stop it, or choose another --workdir")
            logging.warning("taking over the stale lock %s (%s is not running)", path,
                            _describe(owner) if owner else "an unreadable lock")
            storage.remove(path)
            continue
        return path
    raise UserError(f"could not take the lock {path} (another trainer is starting in this workdir?); rerun")


def release(path: str) -> None:
    """Removes the lock if this process holds it."""
    owner = _read(path)
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        storage.remove(path)


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
    """`with locked(workdir):` the run holds WORKDIR/train.lock (only where enabled: process 0)."""
    path = acquire(workdir) if enabled else None
    try:
        yield path
    finally:
        if path is not None:
            release(path)
