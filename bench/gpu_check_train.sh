#!/usr/bin/env bash
# GPU check of the trainer (run on a lent GPU machine from the repository root):
#   1. bench/train_throughput.py: bf16, ZeRO-2 engine vs plain torch, our UNet (ffhq1024 preset)
#      at 64 / 256 / 1024 px with the micro-batches of configs/ffhq1024.yaml;
#   2. a 1-GPU smoke run of the trainer itself (synthetic shards at 256/128/64, bf16, ZeRO-2),
#      killed and resumed once, then exported.
# Results land in $OUT (or bench/results/) as train_throughput.gpu.{json,md} and gpu_train_smoke.log.
# Wheels the device lacks (deepspeed, hjson, pydantic*, annotated-types, typing-inspection,
# webdataset, braceexpand) are installed from ./wheels if that folder exists.
set -euo pipefail
OUT_DIR=${OUT:-bench/results}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python}
if [ -d wheels ]; then $PY -m pip install -q --no-index --find-links wheels deepspeed webdataset || true; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}   # facts file: the default "9.0a" breaks JIT ops
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
export WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT_DIR/gpu_train_smoke.log"

# 1. throughput: stages 4, 2, 0 of ffhq1024 are 64, 256 and 1024 px
timeout 300 $PY bench/train_throughput.py --config configs/ffhq1024.yaml --stages 4,2,0 --steps 10 --warmup 3 \
  --precision bf16 --out "$OUT_DIR/train_throughput.gpu" 2>&1 | grep -v Warning | tee -a "$OUT_DIR/gpu_train_smoke.log"

# 2. trainer smoke run with kill + resume, 256 -> 64 (ffhq256.yaml with its real micro-batches)
WORK=$(mktemp -d)
$PY - "$WORK" <<'PY'
import sys
from dvdp_hr.train.demo_data import make_image_folder
from data_tools.make_shards import main
make_image_folder(sys.argv[1] + "/img", count=256, size=256)
main(["--source", sys.argv[1] + "/img", "--out", sys.argv[1] + "/shards", "--resolutions", "256,128,64",
      "--shard-size", "64", "--workers", "4", "--no-progress"])
PY
TRAIN=($PY -m dvdp_hr.cli train --config configs/ffhq256.yaml --run-dir "$WORK/run" --shards "$WORK/shards"
       --max-images 3000 --checkpoint-every 1000 logging.every_steps=5 logging.progress=false data.num_workers=2)
timeout 120 "${TRAIN[@]}" >>"$OUT_DIR/gpu_train_smoke.log" 2>&1 &
PID=$!
while [ ! -f "$WORK/run/checkpoints/latest" ] && kill -0 $PID 2>/dev/null; do sleep 1; done
sleep 5; kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
echo "killed after $(cat "$WORK/run/checkpoints/latest")" | tee -a "$OUT_DIR/gpu_train_smoke.log"
timeout 240 "${TRAIN[@]}" >>"$OUT_DIR/gpu_train_smoke.log" 2>&1
tail -3 "$WORK/run/stats.jsonl" | tee -a "$OUT_DIR/gpu_train_smoke.log"
$PY -m dvdp_hr.cli export --run-dir "$WORK/run" --out "$WORK/model.safetensors" | tee -a "$OUT_DIR/gpu_train_smoke.log"
echo GPU_TRAIN_CHECK_OK | tee -a "$OUT_DIR/gpu_train_smoke.log"
