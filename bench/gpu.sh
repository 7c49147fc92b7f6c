#!/usr/bin/env bash
# The GPU numbers in bench/README.md in one call of at most 8 minutes: bench/gpu_bench.py (JAX
# vs PyTorch eager vs torch.compile, FCSLSTM and Bi-FCSLSTM at [8, 5, 256, 256, 2], float32
# and bf16, every row time-boxed; temp memory per remat policy; fractions of the card's peak
# and of its memory-bandwidth roofline). Run from the repository root on a GPU machine, with
# the jax / flax / optax / torch it already has (no network needed; versions go to the JSON):
#
#   OUT=runs/gpu bash bench/gpu.sh               # nvidia-smi + gpu_bench.py --budget-s 450
#   EXTRAS=1 OUT=runs/gpu bash bench/gpu.sh      # then train.py, evaluate.py and flops.py
#                                                # (about 5 more minutes, each time-limited)
#   EXTRAS=1 GPU3D=1 OUT=runs/gpu bash bench/gpu.sh   # also the 3D row: the 3D Bi-FCSLSTM
#       step at the accelerator default patch 64x128x128, T = 5, batch 2 (bench/memory3d.py:
#       compiled memory and seconds per step, remat none and lean; about 2 minutes)
#
# Everything lands in $OUT: gpu.log, gpu_bench.json (rows, versions, summary), and with EXTRAS
# the training log, evaluate's metrics.json and its figure, flops.json. The H200 numbers of
# 2026-11-26 in bench/README.md came from an earlier version of this script
# (results/gpu-h200/gpu-call1.log, gpu-call2.log).
set -u
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-450}
WORK=${WORK:-runs/gpu-train}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX would otherwise take 75% of the GPU at start, leaving PyTorch (or another row) the rest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec > >(tee -a "$OUT/gpu.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step() { echo; echo "=== $* ($(date +%T))"; }
step gpu_bench; $PY bench/gpu_bench.py --out "$OUT" --budget-s "$BUDGET"

if [ "${EXTRAS:-0}" = 1 ]; then
  step train; SECONDS=0
  timeout 150 $PY train.py --dataset bric --workdir "$WORK" 2>&1 | tr '\r' '\n' \
    | grep -v "it/s\]$" > "$OUT/train.log"
  echo "train.py exit ${PIPESTATUS[0]} after $SECONDS s"; tail -25 "$OUT/train.log"
  step evaluate; timeout 45 $PY evaluate.py --workdir "$WORK" --out "$WORK/eval" \
    && cp "$WORK/eval/metrics.json" "$OUT/eval_metrics.json" \
    && cp "$WORK"/eval/*.png "$OUT/" 2>/dev/null
  step flops; timeout 60 $PY bench/flops.py --steps 20 --out "$OUT/flops.json"
fi
if [ "${GPU3D:-0}" = 1 ]; then
  step 3d; timeout 180 $PY bench/memory3d.py --time-steps 5 --patch 64 128 128 --batch 2 \
    --remat none lean --large --time 3 --out "$OUT/memory3d.json"
fi
step done
