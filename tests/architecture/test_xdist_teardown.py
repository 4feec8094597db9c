"""The CI command (`pytest -n 2`) ends without a KeyboardInterrupt traceback.

execnet sends an xdist worker SIGINT when it is still busy 5 s after reporting that it finished. Two things kept
workers busy there: pytest's final garbage collections freeing JAX's garbage (now collected before the report, in
tests/conftest.py) and the hypothesis plugin importing hypothesis (disabled in pytest.ini). This runs a worker whose
only test leaves 6 s of garbage-collection work, with this repository's pytest.ini and conftest.py, and reads
execnet's trace."""

import os
import shutil
import subprocess
import sys

from fixtures.paths import REPO


SLOW_GARBAGE = '''
import gc
import time


class SlowFinalizer:
    def __init__(self):
        self.cycle = self  # freed only by the cyclic garbage collector

    def __del__(self):
        time.sleep(6)  # like freeing many XLA executables on a loaded machine


def test_leaves_slow_garbage():
    gc.disable()  # the garbage waits for an explicit collection
    SlowFinalizer()
'''


def test_worker_finishes_before_execnet_interrupts_it(tmp_path):
    for name in ("pytest.ini", os.path.join("tests", "conftest.py")):
        shutil.copy(os.path.join(REPO, name), tmp_path / os.path.basename(name))
    (tmp_path / "test_slow_garbage.py").write_text(SLOW_GARBAGE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "EXECNET"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "1", "test_slow_garbage.py"], cwd=tmp_path,
                          env={**env, "EXECNET_DEBUG": "2"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout
    assert "interrupt_main" not in proc.stderr and "KeyboardInterrupt" not in proc.stdout + proc.stderr
