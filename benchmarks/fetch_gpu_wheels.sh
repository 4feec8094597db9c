#!/usr/bin/env bash
# Prepares here (where pip works) the Python 3.12 packages the GPU machine lacks, as one archive the device call
# carries: .whl/site-py312.tar.xz (git-ignored; carry [".whl"]). gpu_run.sh unpacks it there onto PYTHONPATH.
#
# The GPU machine has jax 0.11 with the CUDA plugin, flax, optax, orbax, torch 2.11 and transformers 5.17 with their
# dependencies, and no network. What the job's stages import beyond that (measured 2026-12-06 by running every stage
# at tiny size with an import log; the job writes the machine's `pip list` to $OUT/pip_list.txt to check it there):
#   ml-collections                     every step benchmark (the configs)
#   numba, llvmlite, pillow            image preprocessing: the decode, evaluation and curation stages
#   pytest, pluggy, iniconfig          the cuDNN unit tests
#   grain, array-record, cloudpickle,  the training pipeline and its metrics (not imported by the benchmarks; carried
#   portpicker, tensorboardX           so that a job that trains finds them)
# The device tool carries at most 64 MiB and llvmlite's wheel alone is 57 MiB, so the wheels are installed into a
# folder here (pip --target for CPython 3.12 manylinux, no bytecode) and packed with xz (~50 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(ml-collections==1.1.0 numba==0.68.1 llvmlite==0.50.0 pillow==13.0.0 pytest==9.0.3 pluggy==1.6.0
          iniconfig==2.3.0 grain==0.2.18 array-record==0.8.6 cloudpickle==2.1.0 portpicker==1.6.0
          tensorboardX==2.6.5)
LIMIT_MIB=64
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
        --platform any)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip download -q --no-deps "${TARGET[@]}" -d "$work/wheels" "${PACKAGES[@]}"
python3 -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$work/site" "$work"/wheels/*.whl
mkdir -p .whl
tar -C "$work/site" -cf - . | xz -6 -T0 > .whl/site-py312.tar.xz.tmp
mv .whl/site-py312.tar.xz.tmp .whl/site-py312.tar.xz
rm -f .whl/*.whl  # the former layout (loose wheels) would travel too
size=$(stat -c %s .whl/site-py312.tar.xz)
echo "$(ls "$work/wheels" | wc -l) packages -> .whl/site-py312.tar.xz, $((size / 1048576)) MiB"
if [ "$size" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "error: .whl/site-py312.tar.xz is over the device tool's ${LIMIT_MIB} MiB carry limit" >&2
  exit 1
fi
