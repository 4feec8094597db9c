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

from fixtures.data import tiny_tokenizer_dir  # noqa: F401 (pytest fixture)
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
    (["--config", "NO_GET_CONFIG"], ["the file defines no get_config()"]),
    (["--config.train.num_stepz=3"], ["--config.train.num_stepz", 'did you mean "num_steps"']),
    (["--config.train.log_every=abc"], ["--config.train.log_every=abc"]),
    (["--config.train.log_every=0"], ["train.log_every must be >= 1", "--config.train.log_every"]),
    (["--config.checkpoint.every_steps=0"], ["checkpoint.every_steps must be >= 1"]),
    (["--config.checkpoint.keep=0"], ["checkpoint.keep must be >= 1"]),
    (["--config.optim.lr=-0.001"], ["optim.lr must be a finite number >= 0"]),
    (["--config.optim.lr=nan"], ["optim.lr must be a finite number >= 0", "nan"]),
    (["--config.data.sources=/data/shards"], ["data.sources[0] is the string", "\"path\": \"/data/shards\""]),
    (["--config.train.eval_every=1", "--config.demo.enabled=False", "--config.evals=()"], ["nothing to evaluate"]),
    (['--config.data.sources=({"kind": "webdataset", "path": "/data", "wieght": 2},)'],
     ["data.sources[0]: unknown key 'wieght'", 'did you mean "weight"']),
    (["--config.evals=(\"nosuch\",)"], ["nosuch"]),
    (['--config.data.sources=({"kind": "webdataset", "path": "{tmp}"},)'], ["data.sources[0].path", "no .tar shards"]),
    (["WORKDIR_IS_A_FILE"], ["is a file, not a directory"]),
    (["WORKDIR_READ_ONLY"], ["cannot be written"]),
])
def test_mistakes_are_one_line_with_exit_status_2(tmp_path, args, expected):
    workdir = str(tmp_path / "run")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    config = DEMO
    if args[:1] == ["--config"]:  # the config file itself (given once: with two --config flags absl takes the first)
        config, args = args[1], args[2:]
    if config == "NO_GET_CONFIG":
        config = str(tmp_path / "no_get_config.py")
        (tmp_path / "no_get_config.py").write_text("x = 1\n")
    if args == ["WORKDIR_IS_A_FILE"]:
        args, workdir = [], str(tmp_path / "a_file")
        open(workdir, "w").close()
    elif args == ["WORKDIR_READ_ONLY"]:
        args, workdir = [], _readonly_dir(tmp_path)
    proc = subprocess.run(train_cli(*args, workdir=workdir, config=config), env=env(), capture_output=True, text=True,
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


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the signal mask from /proc (Linux)")
def test_sigterm_stops_a_dry_run_at_once(tmp_path):
    """A dry run (or a compile for a target, minutes long) saves nothing: SIGTERM ends it, where a training run would
    first finish its step (it used to be deferred like that, so `timeout` could not stop a plan)."""
    proc = subprocess.Popen(train_cli("--dry_run", config=os.path.join(REPO, "configs", "a100x8.py")), env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches_sigterm(proc.pid):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (-signal.SIGTERM, 2), (proc.returncode, err[-2000:])
    assert "Traceback" not in err
    if proc.returncode == 2:
        assert "error: stopped by SIGTERM before the dry run" in err
    assert "parameters" not in out, out[-2000:]  # the dry run's report was never printed


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


def own_data_config(tmp_path, sources: str, tokenizer_dir: str, **data) -> str:
    """A config file as a user writes one: the demo model on their own data (no demo data, no demo evals)."""
    path = tmp_path / "my_config.py"
    path.write_text(f'''import runpy
demo = runpy.run_path({os.path.join(REPO, "configs", "demo.py")!r})


def get_config():
    c = demo["get_config"]()
    c.demo.enabled = False
    c.evals = ()
    c.data.update(sources={sources}, eval_sources=(), tokenizer_dir={tokenizer_dir!r}, **{data!r})
    c.train.update(num_steps=3, eval_every=0)
    return c
''')
    return str(path)


def test_data_without_a_usable_record_stops_with_the_skip_counts_not_a_hang(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    from fixtures.data import json_caption_shards

    shards = json_caption_shards(str(tmp_path))
    config = own_data_config(tmp_path, repr(({"kind": "webdataset", "path": shards},)), tiny_tokenizer_dir)
    proc = subprocess.run(train_cli(workdir=str(tmp_path / "run"), config=config), env=env(), capture_output=True,
                          text=True, timeout=240, cwd=REPO)  # num_epochs=-1 (the default): it spun forever
    assert_one_line_error(proc, "no usable document", "caption_missing 6")
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")


def other_vocabulary(tokenizer_dir: str, out: str) -> str:
    """The same tokenizer files with two token ids swapped: a different vocabulary that loads just as well."""
    import shutil
    shutil.copytree(tokenizer_dir, out)
    path = os.path.join(out, "tokenizer.json")
    spec = json.load(open(path))
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    json.dump(spec, open(path, "w"))
    return out


@pytest.mark.slow  # a training run and two refused resumes (~40 s on 2 idle cores); the contract's logic is tested in
# tests/test_checkpoint_io.py in CI
def test_a_resume_with_other_data_settings_is_refused(tmp_path, tiny_tokenizer_dir):  # noqa: F811
    from fixtures.data import write_numbered_shards

    shards = write_numbered_shards(str(tmp_path / "shards"), 64)
    config = own_data_config(tmp_path, repr(({"kind": "webdataset", "path": shards},)), tiny_tokenizer_dir)
    workdir = str(tmp_path / "run")
    first = subprocess.run(train_cli("--config.train.num_steps=1", workdir=workdir, config=config), env=env(),
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = os.path.join(workdir, "checkpoints", "1")
    for args, expected in (
            ([f"--config.data.tokenizer_dir={other_vocabulary(tiny_tokenizer_dir, str(tmp_path / 'other_tok'))}"],
             ["another vocabulary", checkpoint]),  # it trained on at loss ~ln(vocab): the data's ids meant others
            (["--config.data.chat_format=qwen2"], ["data.chat_format='qwen2'", "'open_qwen2vl'", checkpoint])):
        proc = subprocess.run(train_cli("--config.train.num_steps=2", *args, workdir=workdir, config=config),
                              env=env(), capture_output=True, text=True, timeout=300, cwd=REPO)
        assert_one_line_error(proc, *expected)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "tokenizer"]


def test_init_from_a_directory_without_a_checkpoint_is_one_line_and_no_orbax_thread_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(train_cli("--config.init.source=checkpoint", f"--config.init.init_from={tmp_path / 'empty'}",
                                    "--config.demo.num_train=64", "--config.demo.num_eval=16",
                                    workdir=str(tmp_path / "run")), env=env(), capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert_one_line_error(proc, str(tmp_path / "empty"), "no finished oq2vl_jax checkpoint")
