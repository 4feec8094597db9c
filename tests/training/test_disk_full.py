"""A disk that fills up during a save: the trainer CLI stops with one `error:` line naming the directory and the
step a rerun resumes from (before: 1,300+ lines of Orbax / TensorStore / asyncio tracebacks and no error line), and
the same command, once there is room, resumes from that step with the losses of an uninterrupted run."""

import os
import subprocess

import pytest

from fixtures.training import cli, cli_env, losses

# One step of this run's checkpoint (params + optimizer state of the demo model) is ~5.6 MB: a filesystem of 8 MB
# holds step 3 and fails step 6.
SMALL, LARGE = "8m", "64m"


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of SMALL bytes at tmp_path/fs (unmounted after), or a skip naming why it cannot be mounted here."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL}", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def run(workdir: str, data_dir: str, steps: int) -> subprocess.CompletedProcess:
    args = [a for a in cli(workdir, data_dir) if not a.startswith("--config.train.num_steps=")]
    return subprocess.run(args + [f"--config.train.num_steps={steps}"], env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_during_a_save_is_one_line_and_the_rerun_resumes_exactly(tmp_path, small_filesystem):
    data_dir, workdir = str(tmp_path / "data"), str(small_filesystem / "run")
    full = run(workdir, data_dir, 6)
    assert full.returncode == 2, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: no space left on the device of '{workdir}/checkpoints' while writing a checkpoint: "
                      "free space there (or use another --workdir) and run the same command again; it resumes from "
                      "step 3"], full.stderr[-3000:]
    noise = [line for line in full.stderr.splitlines() if not line.startswith(("I", "W", "error: "))]
    assert noise == [], "\n".join(noise[:40])
    uninterrupted = losses(workdir)  # every step trained; step 6's checkpoint is the one that did not fit
    assert sorted(uninterrupted) == [1, 2, 3, 4, 5, 6]

    subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(small_filesystem)], check=True)
    resumed = run(workdir, data_dir, 6)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints/3" in resumed.stderr
    assert losses(workdir) == uninterrupted  # steps 4-6 trained again from step 3's state and data position
