"""The launch scripts: valid bash, usage errors, and the commands their --dry-run mode prints."""

import os
import shlex
import subprocess

import pytest

LAUNCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "launch")
SCRIPTS = ("single_host.sh", "slurm_gpu.sh", "tpu_pod.sh")
SLURM_VARS = ("SLURM_NNODES", "SLURM_JOB_NODELIST", "SLURM_GPUS_PER_NODE", "XLA_FLAGS")


def run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SLURM_VARS}
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env={**base, **env}, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse_and_reject_missing_arguments(script):
    assert subprocess.run(["bash", "-n", os.path.join(LAUNCH, script)]).returncode == 0
    assert os.access(os.path.join(LAUNCH, script), os.X_OK)
    proc = run(script, "--dry-run")
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_single_host_dry_run():
    proc = run("single_host.sh", "--dry-run", "configs/demo.py", "runs/x", "--config.train.num_steps=5")
    assert proc.returncode == 0, proc.stderr
    assert ("python -m oq2vl_jax.train --config configs/demo.py --workdir runs/x --config.train.num_steps=5"
            in proc.stdout)


def test_slurm_per_node_and_per_gpu():
    env = dict(SLURM_NNODES="4", SLURM_JOB_NODELIST="gpu[07-10]", SLURM_GPUS_PER_NODE="8")
    proc = run("slurm_gpu.sh", "--dry-run", "configs/h100x8.py", "/shared/run", "--config.init.llm_dir=/m x", **env)
    assert proc.returncode == 0, proc.stderr
    exports, srun = proc.stdout.strip().splitlines()
    assert exports == "export JAX_COORDINATOR_ADDRESS=gpu07:12355 JAX_NUM_PROCESSES=4"
    argv = shlex.split(srun)
    assert argv[:3] == ["srun", "--ntasks=4", "--kill-on-bad-exit=1"] and argv[3:5] == ["bash", "-c"]
    inner = shlex.split(argv[5])
    assert "JAX_PROCESS_ID=$SLURM_PROCID;" in inner
    train = inner[inner.index("python"):]
    assert train[:3] == ["python", "-m", "oq2vl_jax.train"]
    assert "--config.mesh.dcn_data=4" in train and "--config.init.llm_dir=/m x" in train

    proc = run("slurm_gpu.sh", "--dry-run", "--per-gpu", "configs/h100x8.py", "/shared/run", **env)
    exports, srun = proc.stdout.strip().splitlines()
    assert "JAX_NUM_PROCESSES=32" in exports
    inner = shlex.split(shlex.split(srun)[5])
    assert "JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID;" in inner and "--config.mesh.data=4" in inner


def test_tpu_pod_runs_the_same_command_on_every_worker():
    proc = run("tpu_pod.sh", "--dry-run", "--create", "pod", "us-east5-a", "v5p-128", "configs/tpu_v5p_128.py",
               "/mnt/shared/run", '--config.data.sources=({"kind": "webdataset", "path": "/d"},)')
    assert proc.returncode == 0, proc.stderr
    lines = [shlex.split(line) for line in proc.stdout.strip().splitlines()]
    assert [line[:4] for line in lines] == [["gcloud", "compute", "tpus", "tpu-vm"]] * 4
    assert [line[4] for line in lines] == ["create", "scp", "ssh", "ssh"]
    assert "--accelerator-type=v5p-128" in lines[0]
    assert all("--worker=all" in line for line in lines[1:])
    assert lines[2][-1].startswith("--command=pip install") and "jax[tpu]" in lines[2][-1]
    train = shlex.split(lines[3][-1].removeprefix("--command="))
    assert train[train.index("python"):][:7] == ["python", "-m", "oq2vl_jax.train", "--config",
                                                 "configs/tpu_v5p_128.py", "--workdir", "/mnt/shared/run"]
    assert train[-1] == '--config.data.sources=({"kind": "webdataset", "path": "/d"},)'
    without_create = run("tpu_pod.sh", "--dry-run", "pod", "z", "v4-64", "configs/tpu_v4_64.py", "/mnt/run")
    assert "create" not in without_create.stdout and without_create.stdout.count("--worker=all") == 3
