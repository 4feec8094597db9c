#!/usr/bin/env bash
# One host, all its accelerators, one process: python -m oq2vl_jax.train.
#
#   launch/single_host.sh [--dry-run] CONFIG WORKDIR [--config.x=y ...]
#   launch/single_host.sh configs/h100x8.py /runs/pretrain --config.init.llm_dir=/models/Qwen2.5-1.5B-Instruct
#
# Re-running the same command resumes from WORKDIR/checkpoints. --dry-run prints the command instead of running it.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# GPU: let XLA take most of the memory up front and overlap collectives with compute (no effect on CPU / TPU).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

CMD=(python -m oq2vl_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@")
if [[ $DRY_RUN == 1 ]]; then
  echo "cd $REPO && XLA_FLAGS='$XLA_FLAGS' ${CMD[*]}"
  exit 0
fi
cd "$REPO"
exec "${CMD[@]}"
