#!/usr/bin/env bash
# Baseline DAPO dynamic sampling: drop groups whose rewards are all equal and refill (verl's filter_groups).
set -euo pipefail
source "$(dirname "$0")/common.sh"

python3 -m duet_verl.main \
  "${DATA[@]}" "${MODEL_ARGS[@]}" "${ACTOR[@]}" "${FSDP_SCHEDULE[@]}" "${ROLLOUT[@]}" "${REF[@]}" "${TRAINER[@]}" \
  duet.enable=false algorithm.adv_estimator=grpo \
  algorithm.filter_groups.enable=true algorithm.filter_groups.metric=acc \
  trainer.experiment_name="${EXPERIMENT:-dapo_ds_$(basename "$MODEL")}" \
  "$@"
