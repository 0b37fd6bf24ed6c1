#!/usr/bin/env bash
# GPU check for one H100 (no network), run as ONE command, in well under 8 minutes:
#  0. its imports first (bench.gpu_imports): a missing module (the device image has torch and
#     accelerate, not open_clip, ftfy or wcwidth) stops it at once, exit 3, naming the wheels
#     to bring into .whl/ and the `pip download` that fetches them;
#  1. the real trainer CLI (handreid.train.cli), bf16, one stage-1 and one stage-2 epoch
#     on generated hands (64 ids x 6 images at 256x192, read at 224 px), for ViT-B-16 and
#     RN50, with weights read from a local OpenAI-format file (bench.openai_weights). Any
#     failure (a dtype bug, say) stops the script here with the trainer's error in the log.
#  2. stage-2 step throughput (bench.gpu_throughput, random init, batch 32): images/s,
#     peak memory, and MFU for bf16; ViT-B-16 and RN50 bf16, ViT-B-16 fp32, 2 and 4
#     concurrent ViT-B-16 bf16 trials (the single run is the 1-trial figure).
#  3. the memory estimate (handreid.train.memory) against torch.cuda.max_memory_allocated of
#     one stage-1 and two stage-2 steps, ViT-B-16 and RN50, whole tower and last block
#     (bench.memory_estimate --device cuda);
#  4. one summary line and $OUT/gpu_summary.json.
# What comes back from $OUT: gpu.txt, train-<backbone>.log, throughput.log,
# gpu_throughput.jsonl, memory.log, memory_estimate.json, gpu_summary.json. Weights, the synthetic data (HANDREID_CACHE) and
# the run directories go to $OUT/scratch, deleted on exit (too many and too large to copy).
# Needs torch and accelerate (on the device image) and open_clip, ftfy, wcwidth (and the rest
# of bench/gpu_imports.py's list): wheels in .whl/ are installed first when present (see the
# device README); step 0 names any that are still missing.
#   bash bench/gpu_check.sh [OUT_DIR]
#   PEAK_TFLOPS=756 bash bench/gpu_check.sh ...   # override the assumed bf16 peak
# CPU smoke test of the same commands at tiny sizes (no GPU, random init unless
# bench/openai_weights.py exists):
#   GPU_CHECK_CPU_SMOKE=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh /tmp/gpu-check-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-bench/results}}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SCRATCH=$OUT/scratch
rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
trap 'rm -rf "$SCRATCH"' EXIT
export HANDREID_CACHE=$SCRATCH/cache PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/site
fi

SETS=(data.root=null data.synth.width=256 data.synth.height=192 data.num_workers=4
  train.mixed_precision=bf16 train.epochs=1 train.stage1_epochs=1)
if [[ ${GPU_CHECK_CPU_SMOKE:-0} == 1 ]]; then
  DEV=(--cpu)
  SETS+=(data.synth.ids=8 data.synth.per_id=4 train.batch_size=8 train.stage1_batch_size=8)
  THR=(--cpu --batch 8 --warmup 1 --steps 1 --peak-tflops 1)
  MEM=(--device cpu --backbone tiny-vit tiny-rn --unfreeze -1 1 --batch 8 --stage1-batch 8)
  WEIGHTS=$([[ -f bench/openai_weights.py ]] && echo file || echo none)
else
  DEV=()
  SETS+=(data.synth.ids=64 data.synth.per_id=6)
  THR=(${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"})
  MEM=(--device cuda --backbone ViT-B-16 RN50 --unfreeze -1 1)
  WEIGHTS=file
fi
stamp() { echo "== $* ($SECONDS s)"; }

# 0. every import the checks need, before anything runs
stamp "imports"
if ! "$PY" -m bench.gpu_imports; then
  echo "gpu_check: stopped before any check: bring the wheels named above" >&2
  exit 3
fi

stamp "device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
"$PY" -c 'import torch, open_clip, accelerate; print("torch", torch.__version__,
"open_clip", open_clip.__version__, "accelerate", accelerate.__version__,
"device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")' \
  | tee -a "$OUT/gpu.txt"

# 1. the trainer CLI, bf16, one epoch of each stage
for spec in ViT-B-16:vitb16 RN50:rn50; do
  backbone=${spec%%:*}
  log=$OUT/train-$backbone.log
  stamp "train $backbone" | tee "$log"
  pretrained=none
  if [[ $WEIGHTS == file ]]; then
    pretrained=$SCRATCH/$backbone.pt
    "$PY" -m bench.openai_weights --backbone "$backbone" --out "$pretrained" 2>&1 | tee -a "$log"
  fi
  args=()
  for kv in "${SETS[@]}" "model.pretrained=$pretrained"; do args+=(--set "$kv"); done
  "$PY" -m handreid.train.cli --config "spaces/base/${spec#*:}.yml" --out "$SCRATCH/run-$backbone" \
    "${DEV[@]}" "${args[@]}" 2>&1 | tee -a "$log"
done

# 2. throughput and MFU (each line appends to gpu_throughput.jsonl)
rm -f "$OUT/gpu_throughput.jsonl"
thr() { "$PY" -m bench.gpu_throughput "$@" --out "$OUT" "${THR[@]}" 2>&1 | tee -a "$OUT/throughput.log"; }
stamp "throughput" | tee "$OUT/throughput.log"
thr single --backbone ViT-B-16 --precision bf16
thr single --backbone RN50 --precision bf16
thr single --backbone ViT-B-16 --precision fp32
thr concurrent --backbone ViT-B-16 --precision bf16 --trials 2
if ((SECONDS < 360)); then # 4 trials start 4 processes: skipped when time is short
  thr concurrent --backbone ViT-B-16 --precision bf16 --trials 4
else
  echo "skipped 4 concurrent trials: ${SECONDS}s used" | tee -a "$OUT/throughput.log"
fi

# 3. the memory estimate against the measured peak
stamp "memory" | tee "$OUT/memory.log"
"$PY" -m bench.memory_estimate "${MEM[@]}" --out "$OUT" 2>&1 | tee -a "$OUT/memory.log"

# 4. summary
"$PY" -m bench.gpu_throughput summary --out "$OUT" | tee -a "$OUT/throughput.log"
stamp "done" | tee -a "$OUT/throughput.log"
