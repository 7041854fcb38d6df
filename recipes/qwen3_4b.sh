#!/usr/bin/env bash
# Qwen3-4B-Base on cleaned MATH with the paper's hyperparameters (SPEC §5): DUET, GRPO or DAPO dynamic sampling.
#   BUDGET=0.5 bash recipes/qwen3_4b.sh           # DUET at half budget, FSDP, one 8-GPU node
# Environment: recipes/common.sh. Megatron splits the 4B model over 2 GPUs (MEGATRON_TP=2).
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-4B-Base}
MEGATRON_TP=${MEGATRON_TP:-2}
source "$(dirname "$0")/common.sh"
# a 4B actor and its reference with FSDP: keep the reference's parameters on the CPU between its forward passes
FAMILY_ARGS=()
[[ $ENGINE == fsdp ]] && FAMILY_ARGS+=(actor_rollout_ref.ref.fsdp_config.param_offload=True)
recipe_run "$@"
