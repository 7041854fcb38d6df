#!/usr/bin/env bash
# DUET with verl's Megatron engine (model_engine=megatron); same DUET settings as the FSDP recipe.
# DUET's pieces (estimator, trainer hooks, agent loop, vLLM server) are engine-agnostic.
set -euo pipefail
source "$(dirname "$0")/common.sh"

BUDGET=${BUDGET:-0.5}
TP=${TP:-2}
EXPERIMENT=${EXPERIMENT:-duet_megatron_b${BUDGET}_$(basename "$MODEL")}

python3 -m duet_verl.main \
  model_engine=megatron \
  "${DATA[@]}" "${MODEL_ARGS[@]}" "${ACTOR[@]}" "${MEGATRON_SCHEDULE[@]}" "${ROLLOUT[@]}" "${REF[@]}" "${TRAINER[@]}" \
  actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$TP" \
  actor_rollout_ref.ref.megatron.tensor_model_parallel_size="$TP" \
  algorithm.adv_estimator=duet_grpo \
  duet.enable=true duet.budget="$BUDGET" \
  trainer.experiment_name="$EXPERIMENT" \
  "$@"
