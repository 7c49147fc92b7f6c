#!/usr/bin/env bash
# The GPU numbers in bench/README.md: the three benchmarks, then the README's main command
# (default config) and evaluate.py, on one GPU, each under its own time limit. Run from the
# repository root on a GPU machine set up with requirements-cuda.txt (+ bench/requirements.txt
# with a CUDA build of torch for the PyTorch rows):
#
#   OUT=runs/gpu bash bench/gpu.sh
#
# Everything it reports lands in $OUT: gpu.log, the benchmarks' JSON, the training log,
# evaluate's metrics.json and its figure. The H200 numbers in bench/README.md came from two
# calls of these steps (results/gpu-h200/gpu-call1.log, gpu-call2.log); the script was
# reordered afterwards to what the second call ran (bf16 in its own process).
set -u
OUT=${OUT:-runs/gpu}
PY=${PYTHON:-python3}
WORK=${WORK:-runs/gpu-train}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# JAX would otherwise take 75% of the GPU at start, leaving PyTorch (same process or a child) the rest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
exec > >(tee -a "$OUT/gpu.log") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY - <<'EOF'
import jax, flax, optax, chex, orbax.checkpoint as ocp
try:
  import torch; tv = f"{torch.__version__} cuda={torch.cuda.is_available()}"
except ImportError:
  tv = None
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", ocp.__version__ if hasattr(ocp, "__version__") else "?", "torch", tv)
print("devices", jax.devices())
EOF

step() { echo; echo "=== $* ($(date +%T))"; }
step train_step; timeout 130 $PY bench/train_step.py --steps 30 --warmup 3 \
  --jax uni bi bi-remat bi-unrolled --no-compile --out "$OUT/train_step.json"
step memory; timeout 110 $PY bench/memory.py --batches 1 4 8 --torch-batches 1 4 8 \
  --out "$OUT/memory.json"
step train; SECONDS=0
timeout 150 $PY train.py --dataset bric --workdir "$WORK" 2>&1 | tr '\r' '\n' \
  | grep -v "it/s\]$" > "$OUT/train.log"
echo "train.py exit ${PIPESTATUS[0]} after $SECONDS s"; tail -25 "$OUT/train.log"
step evaluate; timeout 45 $PY evaluate.py --workdir "$WORK" --out "$WORK/eval" \
  && cp "$WORK/eval/metrics.json" "$OUT/eval_metrics.json" \
  && cp "$WORK"/eval/*.png "$OUT/" 2>/dev/null
step flops; timeout 60 $PY bench/flops.py --steps 20 --out "$OUT/flops.json"
step bf16; timeout 85 $PY bench/train_step.py --steps 20 --warmup 2 --jax bi-bf16 --no-torch \
  --out "$OUT/train_step_bf16.json"
step torch.compile; timeout 80 $PY bench/train_step.py --steps 30 --warmup 3 --jax bi \
  --out "$OUT/train_step_compile.json" | tail -20
step done
