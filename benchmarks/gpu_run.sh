#!/usr/bin/env bash
# The one prepared GPU job: fits one device call (JOB_BUDGET_S, default 540 s, counted from here), the decisive
# numbers first. Installs the carried wheels, then benchmarks/gpu_job.py runs the stages (its docstring: order,
# budget, what each writes to $OUT as it ends).
#
#   here:         benchmarks/fetch_gpu_wheels.sh
#   GPU machine:  bash benchmarks/gpu_run.sh        (device tool: carry [".whl"], timeout_s 600)
#
# TINY=1 runs every stage with tiny models on CPU (checks the job itself; numbers meaningless). VARIANTS, ROWS,
# STEPS, WARMUP, STAGES (a comma list of stage names to run alone): see gpu_job.py.
set -uo pipefail
export JOB_START="${JOB_START:-$(date +%s)}"
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/gpu_results}"
mkdir -p "$OUT"
# The packages the GPU machine lacks (benchmarks/fetch_gpu_wheels.sh), unpacked in front of the machine's own.
PACKED=.whl/site-py312.tar.xz
if [ -f "$PACKED" ] && ! python3 -c "import ml_collections, numba, PIL" 2>/dev/null; then
  python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='tar')" "$PACKED" \
    /tmp/site || { echo "unpacking $PACKED failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
# Flags from MaxText / JAX-Toolbox GPU recipes that help a single-GPU step (collective flags do not apply on 1 GPU).
if [ "${TINY:-0}" != 1 ]; then
  export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer=}"
fi
exec python3 benchmarks/gpu_job.py
