#!/usr/bin/env bash
# On a CUDA machine, from the repository root: CUDA tests, speed, and the paper's sweep on Fashion-MNIST, in a few minutes.
#   bash benchmarks/gpu_check.sh                 # results: benchmarks/results/gpu_check.md (+ gpu_check.log)
# Needs: torch with CUDA, the package's dependencies, Fashion-MNIST in $INTRAFUSION_VIZ_SHARED/data/fashion-mnist
# (or ../shared/data/fashion-mnist); nothing is downloaded.
set -u
cd "$(dirname "$0")/.."
OUT=benchmarks/results
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$LOG" || exit 1
# 1. the test suite's device-sensitive files on this machine (CPU-only tests run too; a GPU changes no result).
timeout 240 python -m pytest -q -x -p no:cacheprovider tests/test_train.py tests/test_finetune.py tests/test_fuse.py \
    tests/test_paper_golden.py 2>&1 | tail -5 | tee -a "$LOG"
# 2-4. CUDA agreement with the CPU, speed, whole-model pruning, the Fashion-MNIST sweep (writes gpu_check.md).
timeout 420 python benchmarks/gpu_check.py --out "$OUT/gpu_check.md" 2>&1 | tee -a "$LOG"
echo "results: $OUT/gpu_check.md" | tee -a "$LOG"
