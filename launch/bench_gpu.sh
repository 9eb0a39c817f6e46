#!/usr/bin/env bash
# GPU benchmarks of the base preset on one GPU (fp16, ZeRO 2): engine (trainer vs DDP + AMP), checkpoint, model.
# Needs an environment whose torch is a CUDA build (this repository's .venv holds the CPU build).
# Usage: PYTHON=python launch/bench_gpu.sh [OUT_DIR (default bench_results/gpu)]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_results/gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else
  'bench_gpu.sh: this torch sees no CUDA device; run it where a CUDA build of torch is installed')"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# LOSS.VGG_PERCEPTUAL.WEIGHT=0: the VGG16 file is not shipped (set LOSS.VGG_PATH to measure with it).
"$PY" -m ds_deblur bench engine --config ds_configs/vrt_spike_baseline.yaml \
    --set TRAIN.GRADIENT_ACCUMULATION_STEPS=1 --set LOSS.VGG_PERCEPTUAL.WEIGHT=0 \
    --ranks 1 --stages 2 --rounds 3 --steps 10 --workers 2 \
    --out "$OUT/engine.json"
"$PY" -m ds_deblur bench checkpoint --ranks 1 --out "$OUT/checkpoint.json"
"$PY" -m ds_deblur bench model --preset base --out "$OUT/model.json"
