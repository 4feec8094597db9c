"""Several command lines of the argparse entry points (generate, evaluate, convert, curate) in ONE subprocess, each
run as `python -m MODULE ARGS` runs it (runpy, `__name__ == "__main__"`): one interpreter start-up for many
one-line-error checks. The trainer (absl flags, defined once per process) gets a subprocess per command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
results = []
for module, args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [module] + args
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
sys.__stdout__.write("\nRESULTS " + json.dumps(results) + "\n")
"""


def env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def run_many(calls: list[tuple[str, list[str]]], *, timeout: float = 300) -> list[dict]:
    """[(module, args), ...] -> [{"rc", "stdout", "stderr"}, ...] in order, from one subprocess."""
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(calls)], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0 and "\nRESULTS " in proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.rsplit("\nRESULTS ", 1)[1])


def run_train(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oq2vl_jax.train", *args], cwd=REPO, env=env(),
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(rc: int, stderr: str, *expected: str) -> str:
    """Asserts exit status 2 with exactly one `error:` line (containing each `expected`) and no traceback."""
    assert rc == 2, (rc, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]
