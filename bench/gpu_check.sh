#!/usr/bin/env bash
# GPU check for one H100 (no network, random init): stage-2 images/s and peak memory for
# ViT-B-16 and RN50 at 224 px, fp32 vs bf16, and the aggregate throughput of 1, 2 and 4
# concurrent trials sharing the GPU (what --gpus-per-trial 1, 0.5, 0.25 do).
# Runs in well under 8 minutes. Needs torch, open_clip and accelerate importable (carry
# the wheels in .whl/ as the device README explains) and this checkout.
#   bash bench/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-bench/results}}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m bench.gpu_throughput single --backbone ViT-B-16 --precision fp32 --out "$OUT"
python3 -m bench.gpu_throughput single --backbone ViT-B-16 --precision bf16 --out "$OUT"
python3 -m bench.gpu_throughput single --backbone RN50 --precision fp32 --out "$OUT"
python3 -m bench.gpu_throughput single --backbone RN50 --precision bf16 --out "$OUT"
for n in 1 2 4; do
  python3 -m bench.gpu_throughput concurrent --backbone ViT-B-16 --precision bf16 --trials "$n" --out "$OUT"
done
python3 -m bench.gpu_throughput summary --out "$OUT"
