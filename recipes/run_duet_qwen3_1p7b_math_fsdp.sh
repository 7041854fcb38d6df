#!/usr/bin/env bash
# DUET on Qwen3-1.7B-Base, Hendrycks MATH, one 8-GPU node, FSDP + vLLM (the paper's setup, SPEC §5).
# Usage: bash recipes/run_duet_qwen3_1p7b_math_fsdp.sh [extra hydra overrides]
#   BUDGET=0.25 bash recipes/run_duet_qwen3_1p7b_math_fsdp.sh       # budget sweep: 1.0, 0.5, 0.25
#   MODEL=Qwen/Qwen3-4B-Base ... / MODEL=meta-llama/Llama-3.2-3B-Instruct ...
# Data: verl parquet files (prompt with the suffix "Please reason step by step, and put your final answer
# within \boxed{}.", reward_model.ground_truth, extra_info.index), e.g. from verl's examples/data_preprocess.
set -euo pipefail
source "$(dirname "$0")/common.sh"

BUDGET=${BUDGET:-0.5}
EXPERIMENT=${EXPERIMENT:-duet_b${BUDGET}_$(basename "$MODEL")}

python3 -m duet_verl.main \
  "${DATA[@]}" "${MODEL_ARGS[@]}" "${ACTOR[@]}" "${FSDP_SCHEDULE[@]}" "${ROLLOUT[@]}" "${REF[@]}" "${TRAINER[@]}" \
  algorithm.adv_estimator=duet_grpo \
  actor_rollout_ref.rollout.agent.default_agent_loop=duet_single_turn \
  duet.enable=true duet.budget="$BUDGET" \
  trainer.experiment_name="$EXPERIMENT" \
  "$@"
