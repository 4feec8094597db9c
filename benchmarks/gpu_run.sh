#!/usr/bin/env bash
# The one prepared GPU job (issue 6): installs the carried wheels, checks the attention backends against xla, runs
# the cuDNN unit tests, times our train step in a few variants and the PyTorch peer in the same job, then prints one
# table; then times generation against transformers (issue 12, `bench decode`). Results (JSON lines + the tables) go
# to $OUT (or ./gpu_results).
#
#   here:         benchmarks/fetch_gpu_wheels.sh
#   GPU machine:  bash benchmarks/gpu_run.sh        (device tool: carry [".whl"], timeout_s 600)
#
# TINY=1 runs the same job with tiny models on CPU (checks the script itself; numbers meaningless).
# VARIANTS selects our runs, "name:overrides" separated by ";" (see the default below). Each run compiles the full
# model once (~1 min) and times STEPS steps after WARMUP.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_results}"
mkdir -p "$OUT"
if ! python3 -c "import grain, ml_collections, tensorboardX" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
# Flags from MaxText / JAX-Toolbox GPU recipes that help a single-GPU step (collective flags do not apply on 1 GPU).
export XLA_FLAGS="${XLA_FLAGS:---xla_gpu_enable_latency_hiding_scheduler=true --xla_gpu_enable_command_buffer=}"
ROWS="${ROWS:-2}" STEPS="${STEPS:-5}" WARMUP="${WARMUP:-2}"
DEFAULT_VARIANTS="full_cudnn:--config.model.remat=full --config.model.attention=cudnn;full_packed:--config.model.remat=full --config.model.attention=cudnn_packed;attn_packed:--config.model.remat=save_attention --config.model.attention=cudnn_packed"

TINY_FLAGS=""; CHECK_FLAGS=""; CONFIG=configs/h100x8.py
if [ "${TINY:-0}" = 1 ]; then
  TINY_FLAGS="--tiny"; CHECK_FLAGS="--tiny"; CONFIG=configs/demo.py
  VARIANTS="${VARIANTS:-tiny_none:--config.model.remat=none;tiny_full:--config.model.remat=full}"
  echo "cpu (TINY=1)" > "$OUT/device.txt"
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
fi
python3 -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/device.txt"
date -u | tee -a "$OUT/device.txt"

echo "== attention backends vs xla (B=2, T=4096, 12/2 heads, hd 128, bf16)"
timeout 180 python3 benchmarks/gpu_check.py $CHECK_FLAGS | tee "$OUT/attention.jsonl"
echo "== cuDNN unit tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention.py 2>&1 | tail -3

IFS=';' read -ra RUNS <<< "${VARIANTS:-$DEFAULT_VARIANTS}"
for run in "${RUNS[@]}"; do
  name="${run%%:*}"; overrides="${run#*:}"
  echo "== ours: $name ($overrides)"
  # shellcheck disable=SC2086
  timeout 300 python3 -m oq2vl_jax.bench step --config "$CONFIG" --rows "$ROWS" --steps "$STEPS" \
    --warmup "$WARMUP" $TINY_FLAGS $overrides --json "$OUT/ours_$name.json" 2>&1 | grep -v "^I1\|^W1" | tail -15
done
echo "== PyTorch peer (gradient checkpointing on, as the reference)"
timeout 240 python3 benchmarks/torch_peer.py --rows "$ROWS" --steps "$STEPS" --warmup "$WARMUP" $TINY_FLAGS \
  --json "$OUT/peer_ckpt.json" 2>&1 | tail -2
echo "== PyTorch peer (gradient checkpointing off)"
timeout 240 python3 benchmarks/torch_peer.py --rows "$ROWS" --steps "$STEPS" --warmup "$WARMUP" --no-grad-ckpt $TINY_FLAGS \
  --json "$OUT/peer_nockpt.json" 2>&1 | tail -2
echo "== evaluation runner throughput (demo VQA task, random-init model, reference prompts; issue 13)"
if [ "${TINY:-0}" = 1 ]; then EVAL_SIZE=tiny; EVAL_ITEMS=32; EVAL_BATCH=8; else EVAL_SIZE=full; EVAL_ITEMS=256; EVAL_BATCH=32; fi
timeout 300 python3 benchmarks/bench_evals.py --size "$EVAL_SIZE" --items "$EVAL_ITEMS" --batch "$EVAL_BATCH" \
  --json "$OUT/evals_throughput.jsonl" 2>&1 | grep -v "^I1\|^W1\|^INFO\|^WARNING" | tail -3
echo "== curation: SigLIP So400m pair score step (bf16, random weights) + host decode per core (.jsonl: not a step row)"
if [ "${TINY:-0}" = 1 ]; then
  timeout 240 python3 benchmarks/bench_curate.py --images 64 --rows 10000 --json "$OUT/curate.jsonl" 2>&1 | tail -1
else
  timeout 240 python3 benchmarks/bench_curate.py --so400m --batch 256 --json "$OUT/curate.jsonl" 2>&1 | tail -1
fi
python3 benchmarks/summarize.py "$OUT" | tee "$OUT/table.md"
# Generation (issue 12): ours vs transformers generate on the hf-llava export of the same random weights, full size
# (SigLIP So400m + Qwen2.5-1.5B, 729 image tokens, bf16), batch 1 / 8 / 64; DECODE=0 skips it.
if [ "${DECODE:-1}" = 1 ]; then
  DECODE_FLAGS="--decode_size full"
  [ "${TINY:-0}" = 1 ] && DECODE_FLAGS="--decode_size small --batches 1,8 --new_tokens 8 --repeats 1"
  echo "== decode: ours vs transformers generate ($DECODE_FLAGS)"
  # shellcheck disable=SC2086
  timeout 540 python3 -m oq2vl_jax.bench decode $DECODE_FLAGS --json "$OUT/decode.json" 2>&1 \
    | grep "^|\|^decode" | tee "$OUT/decode.md"
fi
