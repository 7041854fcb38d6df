#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (H100/H200): the GPU test suite (DUET's monitor inside vLLM's
# real AsyncLLM on CUDA) and `duet-verl bench --vllm` on a randomly initialised Qwen3-1.7B-shaped model.
#
# Needs vLLM 0.24 importable (a machine installed with `python install.py '.[test]'`, or PYTHONPATH pointing at an
# unpacked install). Writes its logs to $OUT (default /tmp/gpu_check); the bench's last line is its JSON.
# Usage: bash scripts/gpu_check.sh [requests] [max_tokens] [rounds]   (sized to finish in under 10 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
REQUESTS=${1:-128}
MAX_TOKENS=${2:-256}
ROUNDS=${3:-3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, vllm; print('torch', torch.__version__, '| vllm', vllm.__version__)" | tee -a "$OUT/device.txt" \
  || exit 3

echo "== tests/gpu"
timeout 200 "$PY" -m pytest tests/gpu -o python_files='test_*.py' -p no:cacheprovider -q -x 2>&1 \
  | tee "$OUT/tests_gpu.log" || status=1

echo "== bench --vllm (qwen3-1.7b shape, $REQUESTS requests x $MAX_TOKENS tokens, $ROUNDS rounds)"
timeout 300 "$PY" -m duet_verl.cli bench --repeats 10 --vllm --shape qwen3-1.7b \
  --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --rounds "$ROUNDS" 2>&1 | tee "$OUT/bench_vllm.log" || status=1
tail -n 1 "$OUT/bench_vllm.log" > "$OUT/bench_vllm.json"
exit $status
