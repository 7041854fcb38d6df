#!/usr/bin/env bash
# Llama-3.2-3B-Instruct on cleaned MATH with the paper's hyperparameters (SPEC §5): DUET, GRPO or DAPO.
#   METHOD=grpo bash recipes/llama3p2_3b.sh       # GRPO at full budget, FSDP, one 8-GPU node
# Environment: recipes/common.sh. The model is gated on Hugging Face: accept its licence and log in (or set MODEL
# to a local copy). Megatron splits it over 2 GPUs (MEGATRON_TP=2).
set -euo pipefail
MODEL=${MODEL:-meta-llama/Llama-3.2-3B-Instruct}
MEGATRON_TP=${MEGATRON_TP:-2}
source "$(dirname "$0")/common.sh"
FAMILY_ARGS=()
[[ $ENGINE == fsdp ]] && FAMILY_ARGS+=(actor_rollout_ref.ref.fsdp_config.param_offload=True)
recipe_run "$@"
