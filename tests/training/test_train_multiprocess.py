"""Two local processes x 4 CPU devices (jax.distributed over localhost, gloo): the same tiny run as on one device gives
the same loss curve; each process feeds its own rows and writes its own data-iterator state; SIGTERM stops both at
the same step with a checkpoint.

Run as a script (`python tests/training/test_train_multiprocess.py WORKDIR`) it is one worker; the test starts two."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fixtures.paths import REPO, TESTS

ROWS = 16


def multiprocess_config(hybrid: bool):
    from fixtures.training import tiny_config

    config = tiny_config(num_steps=4, global_batch_rows=ROWS)
    # two processes: DCN data=2 over processes (a hybrid mesh), ICI fsdp=4 inside each; the reference: one device
    config.mesh.update(data=1, fsdp=4, dcn_data=2) if hybrid else config.mesh.update(data=1, fsdp=1)
    return config


class SlowIterator:
    """Synthetic batches at ~3 per second, so that a SIGTERM lands mid-run."""

    def __init__(self, inner):
        self.inner = inner

    def __next__(self):
        time.sleep(0.3)
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def worker(workdir: str, mode: str) -> None:
    import jax

    from oq2vl_jax import parallel
    from oq2vl_jax.training import loop
    from fixtures.training import FAST_COMPILE, synthetic_factory

    assert parallel.initialize_distributed("auto")
    assert jax.process_count() == 2 and jax.local_device_count() == 4
    config = multiprocess_config(hybrid=True)
    mesh = parallel.build_mesh(config.mesh)
    rows = ROWS // 2
    assert parallel.process_rows(mesh, ROWS) == (jax.process_index() * rows, (jax.process_index() + 1) * rows)
    factory = synthetic_factory()
    if mode == "sigterm":
        config.train.update(num_steps=500, eval_every=0)
        factory = lambda *args: SlowIterator(synthetic_factory()(*args))  # noqa: E731
    result = loop.run(config, workdir, data_factory=factory, compiler_options=FAST_COMPILE)
    print(f"RESULT {result.stopped_by} {result.last_step}", flush=True)
    jax.distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(workdir: str, mode: str) -> list[subprocess.Popen]:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_NUM_PROCESSES": "2",
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}", "PYTHONPATH": os.pathsep.join([REPO, TESTS])}
    return [subprocess.Popen([sys.executable, __file__, workdir, mode], env={**env, "JAX_PROCESS_ID": str(i)},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def test_two_processes_match_one_process(tmp_path):
    from oq2vl_jax.training import loop, metrics
    from fixtures.training import FAST_COMPILE, synthetic_factory

    workdir = str(tmp_path / "multi")
    procs = start_workers(workdir, "train")
    # the reference runs meanwhile, on one device
    single = str(tmp_path / "single")
    loop.run(multiprocess_config(hybrid=False), single, devices=jax.devices()[:1], data_factory=synthetic_factory(),
             compiler_options=FAST_COMPILE)
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "RESULT num_steps 4" in out, f"process {i}:\n{out[-4000:]}"
    got = [r["loss"] for r in metrics.read_metrics(workdir) if "loss" in r]
    expected = [r["loss"] for r in metrics.read_metrics(single) if "loss" in r]
    assert len(got) == len(expected) == 4
    np.testing.assert_allclose(got, expected, rtol=2e-5)
    assert [r["step"] for r in metrics.read_metrics(workdir) if "eval_loss" in r] == [2, 4]
    data_dir = os.path.join(workdir, "checkpoints", "4", "data")
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))


@pytest.mark.slow  # ~1 minute: two more process start-ups
def test_sigterm_stops_every_process_at_the_same_step_with_a_checkpoint(tmp_path):
    from oq2vl_jax.training import metrics

    workdir = str(tmp_path / "multi")
    procs = start_workers(workdir, "sigterm")
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 3 for r in metrics.read_metrics(workdir)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), procs[0].stdout.read()[-3000:]
        time.sleep(0.1)
    for proc in procs:  # as a scheduler does: every process gets the signal
        proc.send_signal(signal.SIGTERM)
    results = []
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"process {i}:\n{out[-4000:]}"
        results.append(next(line for line in out.splitlines() if line.startswith("RESULT")))
    assert results[0] == results[1] and results[0].startswith("RESULT sigterm")
    step = int(results[0].split()[-1])
    assert 3 <= step < 500 and str(step) in os.listdir(os.path.join(workdir, "checkpoints"))


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
