#!/usr/bin/env bash
# Baseline GRPO through the same entry point and logging (duet.enable=false).
#   BUDGET=0.5 runs GRPO at the same token budget as DUET@0.5 by halving the rollouts per prompt.
set -euo pipefail
source "$(dirname "$0")/common.sh"

BUDGET=${BUDGET:-1.0}
N=$(python3 -c "print(max(1, round(${BUDGET} * ${GROUP})))")

python3 -m duet_verl.main \
  "${DATA[@]}" "${MODEL_ARGS[@]}" "${ACTOR[@]}" "${FSDP_SCHEDULE[@]}" "${ROLLOUT[@]}" "${REF[@]}" "${TRAINER[@]}" \
  duet.enable=false algorithm.adv_estimator=grpo \
  actor_rollout_ref.rollout.n="$N" \
  trainer.experiment_name="${EXPERIMENT:-grpo_b${BUDGET}_$(basename "$MODEL")}" \
  "$@"
