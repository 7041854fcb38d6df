#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (H100/H200), downloading nothing: the GPU test suite (DUET's
# monitor inside vLLM's real AsyncLLM on CUDA, with vLLM's async scheduling on and off), `duet-verl bench --vllm` on a
# randomly initialised Qwen3-1.7B-shaped model with async scheduling on (vLLM's GPU default) and off, and 2 DUET
# training steps through verl's V1 trainer with rollout.name=vllm on the quickstart's locally built tiny model
# (`duet-verl quickstart --device cuda`: the same per-policy overrides as the CPU end-to-end test, with
# gpu_overrides() in place of cpu_overrides()).
#
# Time: each check runs under its own limit (below). Without verl the limits add up to 9.5 minutes (on an H200 the
# checks took 6.5); the training check adds 3, more than one 10-minute device call holds, so run it in a second call
# there. Needs vLLM 0.24 importable (a machine installed with `python install.py '.[test]'`, or PYTHONPATH pointing
# at an unpacked install); the training check needs verl too and is skipped, printing why, where verl does not import.
# Writes its logs to $OUT (default /tmp/gpu_check); the bench's last line is its JSON; the training's summary is
# $OUT/train/summary.json. Ends with one summary line per check.
# Usage: bash scripts/gpu_check.sh [requests] [max_tokens] [rounds]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
REQUESTS=${1:-128}
MAX_TOKENS=${2:-256}
ROUNDS=${3:-3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset VERL_PLATFORM  # CUDA: verl's own platform detection
status=0
SUMMARY=()

# run NAME SECONDS CMD...: one check under its own time limit, logged to $OUT/NAME.log, its outcome kept for the end
run() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  (( rc == 0 )) || status=1
  SUMMARY+=("$name: $([[ $rc == 0 ]] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - start))s")
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
"$PY" -c "import torch, vllm; print('torch', torch.__version__, '| vllm', vllm.__version__)" | tee -a "$OUT/device.txt" \
  || exit 3

run tests_gpu 160 "$PY" -m pytest tests/gpu -o python_files='test_*.py' -p no:cacheprovider -q -x
run bench_vllm 240 "$PY" -m duet_verl.cli bench --repeats 10 --vllm --shape qwen3-1.7b \
  --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --rounds "$ROUNDS"
tail -n 1 "$OUT/bench_vllm.log" > "$OUT/bench_vllm.json"
run bench_vllm_sync 170 "$PY" -m duet_verl.cli bench --repeats 3 --vllm --shape qwen3-1.7b --async-scheduling off \
  --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --rounds "$ROUNDS"
tail -n 1 "$OUT/bench_vllm_sync.log" > "$OUT/bench_vllm_sync.json"
rm -rf "$OUT/train"
if "$PY" -c "import verl" 2>"$OUT/verl_import.txt"; then
  run train_duet_2_steps 180 "$PY" -m duet_verl.cli quickstart --device cuda --out "$OUT/train" --steps 2 \
    --policies duet@0.5 --warm-start-steps 20 --prompts-per-step 4 --group-size 4 --evals 1
else
  SUMMARY+=("train_duet_2_steps: skipped (verl does not import here: $(tail -n 1 "$OUT/verl_import.txt"))")
fi

echo "== summary ($(head -n 1 "$OUT/device.txt"))"
printf '%s\n' "${SUMMARY[@]}"
echo "bench: $(cat "$OUT/bench_vllm.json")"
echo "bench, async scheduling off: $(cat "$OUT/bench_vllm_sync.json")"
[[ -d "$OUT/train" ]] || exit $status
"$PY" - "$OUT/train/summary.json" <<'PY' || status=1
import json, sys
try:
    run = json.load(open(sys.argv[1]))["results"][0]
except (OSError, ValueError, LookupError) as err:
    sys.exit(f"train: no summary ({err!r})")
print(f"train: {run['policy']} {run['steps']} steps, {run['tokens_total']:.0f} tokens, abort rate {run['abort_rate']},"
      f" score mismatches {run['score_mismatch']}, final accuracy {run['final_accuracy']}, {run['wall_clock_s']:.0f}s")
sys.exit(0 if run["steps"] == 2 and run["score_mismatch"] == 0 else "train: want 2 logged steps and no score mismatch")
PY
exit $status
