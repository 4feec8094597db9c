#!/usr/bin/env bash
# A TPU pod slice: (optionally) create the TPU VM, copy this repository to every worker, install, and run the same
# training command on all workers at once (--worker=all); jax.distributed discovers the pod by itself.
#
#   launch/tpu_pod.sh [--dry-run] [--create] NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.x=y ...]
#   launch/tpu_pod.sh --create oq2vl-v5p us-east5-a v5p-128 configs/tpu_v5p_128.py /mnt/shared/runs/pt \
#       --config.init.llm_dir=/mnt/shared/models/Qwen2.5-1.5B-Instruct ...
#
# WORKDIR, weights and data must be POSIX paths every worker sees (a gcsfuse-mounted bucket or a Filestore share).
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

DRY_RUN=0 CREATE=0
while [[ "${1:-}" == --dry-run || "${1:-}" == --create ]]; do
  [[ $1 == --dry-run ]] && DRY_RUN=1
  [[ $1 == --create ]] && CREATE=1
  shift
done
if [[ $# -lt 5 ]]; then
  echo "usage: $0 [--dry-run] [--create] NAME ZONE ACCELERATOR CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
NAME=$1 ZONE=$2 ACCELERATOR=$3 CONFIG=$4 WORKDIR=$5
shift 5
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNTIME=${TPU_RUNTIME_VERSION:-v2-alpha-tpuv5}
JAX_TPU=${JAX_TPU_SPEC:-jax[tpu]>=0.10.2,<0.12}

PIP="pip install -q -U '$JAX_TPU' flax optax orbax-checkpoint grain ml-collections absl-py numpy pillow"
PIP+=" safetensors tokenizers transformers tensorboardX psutil"
TRAIN="cd ~/oq2vl_jax && python -m oq2vl_jax.train --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR")"
for arg in "$@"; do TRAIN+=" $(printf %q "$arg")"; done

run() {
  if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

if [[ $CREATE == 1 ]]; then
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi
run gcloud compute tpus tpu-vm scp --recurse "$REPO" "$NAME:~/oq2vl_jax" --zone="$ZONE" --worker=all
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$PIP"
# Every worker runs the same command; preemption (SIGTERM) is synchronised by jax: all save at the same step.
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$TRAIN"
