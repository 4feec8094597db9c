#!/usr/bin/env bash
# Multi-node GPU training under SLURM: srun starts one process per node (default) or one per GPU (--per-gpu); the
# coordinator is the first node of the allocation. Submit with sbatch, or run inside an salloc allocation.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=1 launch/slurm_gpu.sh configs/h100x8.py /shared/runs/pt \
#       --config.init.llm_dir=... --config.data.sources='(...)'
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/slurm_gpu.sh --per-gpu CONFIG WORKDIR ...
#   launch/slurm_gpu.sh --dry-run [--per-gpu] CONFIG WORKDIR ...     prints what would run (SLURM_* may be unset)
#
# Mesh: per node, DCN data parallel over the nodes and FSDP over each node's GPUs (a hybrid mesh, one granule per
# process); per GPU, a flat mesh with data = nodes, FSDP inside a node. WORKDIR must be on a shared file system.
#SBATCH --job-name=oq2vl-pretrain
#SBATCH --exclusive
set -euo pipefail

DRY_RUN=0 PER_GPU=0
while [[ "${1:-}" == --dry-run || "${1:-}" == --per-gpu ]]; do
  [[ $1 == --dry-run ]] && DRY_RUN=1
  [[ $1 == --per-gpu ]] && PER_GPU=1
  shift
done
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] [--per-gpu] CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1 WORKDIR=$2
shift 2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NODES=${SLURM_NNODES:-2}
NODELIST=${SLURM_JOB_NODELIST:-node[1-2]}
if command -v scontrol >/dev/null 2>&1 && [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
  HEAD=$(scontrol show hostnames "$NODELIST" | head -n 1)
else
  HEAD=${NODELIST%%[*}${NODELIST#*[}; HEAD=${HEAD%%[-,]*}; HEAD=${HEAD%]}
fi
PORT=${OQ2VL_COORDINATOR_PORT:-12355}
if [[ $PER_GPU == 1 ]]; then
  TASKS=$((NODES * ${SLURM_GPUS_PER_NODE:-8}))
  MESH=(--config.mesh.data="$NODES" --config.mesh.fsdp=-1)
  LOCAL='export JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID;'
else
  TASKS=$NODES
  MESH=(--config.mesh.dcn_data="$NODES" --config.mesh.data=1 --config.mesh.fsdp=-1)
  LOCAL=''
fi

export JAX_COORDINATOR_ADDRESS="$HEAD:$PORT" JAX_NUM_PROCESSES=$TASKS
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
TRAIN="cd $REPO && $LOCAL export JAX_PROCESS_ID=\$SLURM_PROCID; exec python -m oq2vl_jax.train"
TRAIN+=" --config $(printf %q "$CONFIG") --workdir $(printf %q "$WORKDIR") ${MESH[*]}"
for arg in "$@"; do TRAIN+=" $(printf %q "$arg")"; done
SRUN=(srun --ntasks="$TASKS" --kill-on-bad-exit=1 bash -c "$TRAIN")

if [[ $DRY_RUN == 1 ]]; then
  echo "export JAX_COORDINATOR_ADDRESS=$JAX_COORDINATOR_ADDRESS JAX_NUM_PROCESSES=$JAX_NUM_PROCESSES"
  printf '%q ' "${SRUN[@]}"; echo
  exit 0
fi
# srun forwards SIGTERM (preemption, scancel) to every task: each saves a checkpoint at the same step and exits 0.
exec "${SRUN[@]}"
