"""A training workdir in an S3 bucket (a real S3 server, moto): the one-trainer lock by conditional create, metrics
and TensorBoard copied whole, and the loop resuming a crashed run from the bucket bit-exactly."""

import json
import os
import socket
import subprocess
import sys

import pytest

from oq2vl_jax.errors import UserError
from oq2vl_jax.storage import paths
from oq2vl_jax.training import metrics, workdir as workdir_lib
from fixtures.s3 import bucket, s3_server  # noqa: F401 (fixtures)
from fixtures.training import FAST_COMPILE, SyntheticIterator, synthetic_factory, tiny_config


def _owner(pid: int, host: str | None = None) -> bytes:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "earlier"}).encode()


def test_check_workdir_names_the_problem(bucket):
    assert workdir_lib.check_workdir(bucket + "/runs/a/") == bucket + "/runs/a"
    with pytest.raises(UserError, match="not the bucket itself"):
        workdir_lib.check_workdir(bucket)
    paths.write_bytes(bucket + "/runs/file", b"x")
    with pytest.raises(UserError, match="is an object, not a prefix"):
        workdir_lib.check_workdir(bucket + "/runs/file")
    with pytest.raises(UserError, match="cannot be written"):
        workdir_lib.check_workdir("s3://no-such-bucket-oq2vl/runs/a")


def test_lock_is_one_conditional_create(bucket):
    run = bucket + "/runs/a"
    lock = workdir_lib.acquire(run)
    assert lock == run + "/train.lock" and json.loads(paths.read_bytes(lock))["pid"] == os.getpid()
    workdir_lib.release(lock)
    assert not paths.exists(lock)

    paths.write_bytes(lock, _owner(os.getppid()))  # a live trainer on this host
    with pytest.raises(UserError, match="another trainer is running in this workdir"):
        workdir_lib.acquire(run)
    paths.write_bytes(lock, _owner(os.getppid(), host="other-host"))
    with pytest.raises(UserError, match="another trainer uses this workdir .* on other-host"):
        workdir_lib.acquire(run)
    assert json.loads(paths.read_bytes(lock))["host"] == "other-host"  # never taken from its owner

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    paths.write_bytes(lock, _owner(int(gone.stdout)))  # left by a trainer killed with -9
    with workdir_lib.locked(run):
        assert json.loads(paths.read_bytes(lock))["pid"] == os.getpid()  # taken over
    assert not paths.exists(lock)


def test_metrics_are_copied_whole_and_resume_truncates(bucket):
    run = bucket + "/runs/m"
    writer = metrics.MetricsWriter(run, enabled=True, tensorboard=True)
    writer.write({"step": 1, "loss": 2.0})
    writer.write({"step": 2, "loss": 1.5, "step_time": 0.1})  # a log step: copied to the bucket now
    assert [r["step"] for r in metrics.read_metrics(run)] == [1, 2]
    writer.write({"step": 3, "loss": 1.0})
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(run)] == [1, 2, 3]
    assert any(n.startswith("events.out.tfevents") for n in paths.listdir(run + "/tensorboard"))
    metrics.truncate_metrics(run, 2)  # resuming from the step-2 checkpoint
    assert [r["step"] for r in metrics.read_metrics(run)] == [1, 2]
    again = metrics.MetricsWriter(run, enabled=True, tensorboard=False)  # appends after what is there
    again.write({"step": 3, "loss": 0.9})
    again.close()
    assert [(r["step"], r["loss"]) for r in metrics.read_metrics(run)] == [(1, 2.0), (2, 1.5), (3, 0.9)]


class CrashingIterator(SyntheticIterator):
    """Raises (a crash: no checkpoint for the step under way) when asked for batch `at`."""

    def __init__(self, rows, at: int):
        super().__init__(rows)
        self.at = at

    def __next__(self):
        if self.index == self.at:
            raise RuntimeError("simulated crash")
        return super().__next__()


def test_loop_in_a_bucket_resumes_a_crashed_run_bit_exactly(tmp_path, bucket):
    """The trainer's loop with a bucket workdir: checkpoints (params, optimizer, data state) saved and restored through
    Orbax on s3://, metrics truncated to the restored step; the losses equal a local uninterrupted run's."""
    import jax

    from oq2vl_jax.training import loop

    def run(directory, factory):  # FSDP over 2 devices: sharded saves and restores
        config = tiny_config(num_steps=4, eval_every=0)
        config.mesh.update(data=1, fsdp=-1)
        return loop.run(config, directory, devices=jax.devices()[:2], data_factory=factory,
                        compiler_options=FAST_COMPILE)

    reference = str(tmp_path / "reference")
    run(reference, synthetic_factory())
    workdir = bucket + "/runs/loop"
    with pytest.raises(RuntimeError, match="simulated crash"):  # checkpoint at 2, crash reading batch 3
        run(workdir, lambda split, seed, pi, pc, rows: CrashingIterator(rows, 3))
    # step 3 may have run before the prefetcher met the crash; no checkpoint after step 2 either way
    assert [r["step"] for r in metrics.read_metrics(workdir)] in ([1, 2], [1, 2, 3])
    assert not paths.exists(workdir + "/train.lock")  # released on the way out
    final = run(workdir, synthetic_factory())
    assert (final.start_step, final.last_step) == (2, 4)
    losses = lambda d: {r["step"]: r["loss"] for r in metrics.read_metrics(d) if "loss" in r}  # noqa: E731
    assert losses(workdir) == losses(reference)  # bit-exact, each step once
    assert sorted(int(n) for n in paths.listdir(workdir + "/checkpoints") if n.isdigit()) == [2, 4]
