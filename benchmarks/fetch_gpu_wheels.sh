#!/usr/bin/env bash
# Downloads (here, where pip works) the Python 3.12 wheels the GPU machine lacks into .whl/ (git-ignored via
# .git/info/exclude). The GPU machine has jax 0.11, flax, optax, orbax, torch and transformers, but not these.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
  grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 tensorboardX==2.6.5 portpicker==1.6.0 \
  numba==0.68.1 llvmlite==0.50.0
ls -la .whl
