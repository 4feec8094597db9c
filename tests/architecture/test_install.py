"""Installation: pyproject.toml and requirements.txt agree, torch is optional, and no module of the package imports
torch when imported, and loading a tokenizer and the trainer's dry run work without it (checked in a subprocess where
`import torch` fails, as on a machine without it; only the PyTorch-side formats import torch, inside functions)."""

import os
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from fixtures.paths import REPO

# the `test` extra: s3fs (also the `s3` extra) and moto's S3 server (moto, flask, flask-cors) for the bucket tests
TEST_ONLY = {"torch", "pytest", "pytest-xdist", "s3fs", "moto", "flask", "flask-cors"}


def pins() -> dict[str, str]:
    out = {}
    with open(os.path.join(REPO, "requirements.txt")) as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                req = Requirement(line)
                out[req.name.lower()] = req
    return out


def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def test_pyproject_and_requirements_agree_and_torch_is_optional():
    project = pyproject()
    deps = {Requirement(d).name.lower(): Requirement(d) for d in project["dependencies"]}
    pinned = pins()
    assert "torch" not in deps and "pyarrow" in deps and "pyarrow" in pinned
    assert set(deps) == set(pinned) - TEST_ONLY, "a package is in one file and not the other"
    for name, req in deps.items():
        version = re.sub(r"\.\*$", ".0", next(iter(pinned[name].specifier)).version)
        assert req.specifier.contains(version, prereleases=True), f"{name}: pin {version} outside {req.specifier}"
    extras = {Requirement(d).name.lower(): Requirement(d) for d in project["optional-dependencies"]["test"]}
    assert set(extras) == TEST_ONLY
    for name, req in extras.items():
        assert req.specifier.contains(next(iter(pinned[name].specifier)).version)
    buckets = {k: [Requirement(d).name.lower() for d in project["optional-dependencies"][k]] for k in ("s3", "gcs")}
    assert buckets == {"s3": ["s3fs"], "gcs": ["gcsfs"]}


BLOCKED_TORCH = """
import importlib, pkgutil, runpy, sys
sys.modules["torch"] = None  # `import torch` raises ImportError, as without torch installed
import oq2vl_jax
for module in pkgutil.walk_packages(oq2vl_jax.__path__, "oq2vl_jax."):  # every module of the package
    importlib.import_module(module.name)
from oq2vl_jax.demo import shapes as demo
from oq2vl_jax.text.tokens import load_tokenizer
tok = load_tokenizer(demo.build_tiny_tokenizer(sys.argv[1]))
assert len(tok) > 256
sys.argv = ["oq2vl_jax.train", "--config", "configs/demo.py", "--dry_run", "--dry_run_devices=1"]
try:
    runpy.run_module("oq2vl_jax.train", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("torch-free ok")
"""


def test_training_and_inference_paths_do_not_need_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCKED_TORCH, str(tmp_path / "tok")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "torch-free ok" in proc.stdout and "per-device memory" in proc.stdout
