#!/usr/bin/env bash
# GPU training benchmark for the conditional GAN, in one command, on a bare GPU machine that has
# this repository. Prints img/s at R=64 and R=128 with bf16 on/off and torch.compile on/off,
# FLOPs per training image and the achieved share of the GPU's bf16 peak
# (GFLOP/img x img/s / peak), then trains the default recipe at R=64 for --recipe-kimg and prints
# its evaluation (conditioning accuracy, KID, diversity, copy rate; benchmarks/bench_recipe.py).
# Budgeted to finish in under 8 minutes on an H100/H200.
#
#   benchmarks/gpu_train.sh [--peak-tflops 989] [--batch-size 256] [--steps 200] [--width 32]
#                           [--recipe-kimg 200]
#   benchmarks/gpu_train.sh --cpu-smoke      # seconds-long CPU run that checks the script itself
#
# Python, first that works: $PYTHON; .venv/bin/python (`make install`); a python3 whose torch
# sees a GPU (system or container torch). The repository is put on PYTHONPATH, so nothing needs
# installing when that interpreter already has the project's libraries; otherwise the missing
# ones (never torch) are pip-installed into .venv-gpu, a venv that sees the system torch (this
# needs a reachable package index). Peak default: H200/H100 SXM dense bf16, 989 TFLOP/s.
# Results also go to .housegan/gpu_train.json (or $OUT/gpu_train.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."

PEAK=989
BATCH=256
STEPS=200
WIDTH=32
RECIPE_KIMG=200
SMOKE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --peak-tflops) PEAK="$2"; shift 2 ;;
    --batch-size) BATCH="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --width) WIDTH="$2"; shift 2 ;;
    --recipe-kimg) RECIPE_KIMG="$2"; shift 2 ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

NEEDS="torch numpy pandas pyarrow PIL fsspec pydantic pydantic_settings yaml safetensors torchvision"
has_all() { "$1" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $NEEDS 2>/dev/null; }

PY=""
for candidate in "${PYTHON:-}" .venv/bin/python python3; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null && "$candidate" -c "import torch" 2>/dev/null; then
    PY="$candidate"; break
  fi
done
if [ -z "$PY" ]; then echo "no python with torch found (set PYTHON=...)" >&2; exit 1; fi
if ! has_all "$PY"; then
  echo "[$PY lacks some of: $NEEDS] making .venv-gpu on top of its torch"
  [ -x .venv-gpu/bin/python ] || "$PY" -m venv --system-site-packages .venv-gpu
  .venv-gpu/bin/python -m pip install -q --disable-pip-version-check \
    numpy pandas pyarrow pillow "fsspec>=2026.9.0" pydantic pydantic-settings pyyaml safetensors tqdm
  PY=.venv-gpu/bin/python
  has_all "$PY" || { echo "still missing packages (torchvision must match torch)" >&2; exit 1; }
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"

mkdir -p "${OUT:-.housegan}"
JSON="${OUT:-.housegan}/gpu_train.json"
if [ "$SMOKE" = 1 ]; then
  exec "$PY" benchmarks/bench_train.py --device cpu --sizes 32 --precision fp32 bf16 \
    --compile off --batch-size 4 --steps 4 --log-every 2 --bare-steps 2 --warmup 1 \
    --width 4 --images 16 --threads 1 --peak-tflops "$PEAK" --json "${JSON%.json}-smoke.json"
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true

# bf16 off = fp32 (TF32 matmuls allowed, as in training). 2 sizes x 2 precisions x 2 compile.
time "$PY" benchmarks/bench_train.py --device cuda --sizes 64 128 --precision bf16 fp32 \
  --compile off on --batch-size "$BATCH" --steps "$STEPS" --log-every 25 --bare-steps 20 \
  --warmup 3 --width "$WIDTH" --images 2048 --peak-tflops "$PEAK" --json "$JSON"
echo "target: >= 5500 img/s at R=128 and >= 30% of the bf16 peak; rows in $JSON"

# What the recipe learns in a fixed budget at R=64: conditioning accuracy, KID, diversity, copy
# rate (housegan.evaluate on the GPU), on real photo crops and the synthetic listings.
if "$PY" -c "import sklearn, skimage, torch_fidelity" 2>/dev/null; then
  time "$PY" benchmarks/bench_recipe.py --device cuda --size 64 --kimg "$RECIPE_KIMG" \
    --sets photo_crops listings --recipes defaults --samples 200 --embed-size 64 \
    --out "${OUT:-.housegan}/recipe-gpu"
else
  echo "skipping the recipe metrics: $PY lacks scikit-learn, scikit-image or torch-fidelity"
fi
