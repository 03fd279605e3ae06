#!/usr/bin/env bash
# One GPU, under 10 minutes: PGD-10 attack and PGD-AT train step throughput and model FLOP
# utilisation (PreAct-ResNet-18, CIFAR-10 shapes). Needs the GPU build: pip install -e ".[gpu]".
#   benchmarks/gpu_check.sh [BATCH] [OUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-512}
out=${2:-gpu_check.json}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "error: no NVIDIA GPU found (nvidia-smi); run this on a GPU machine" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}   # one GPU
timeout 600 "${PYTHON:-python}" benchmarks/gpu_check.py --batch "$batch" --out "$out"
