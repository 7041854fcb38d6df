#!/usr/bin/env bash
# Qwen3-1.7B-Base on cleaned MATH (the paper's main setting, SPEC §5): DUET, GRPO or DAPO dynamic sampling.
#   bash recipes/qwen3_1p7b.sh                                  # DUET at full budget, FSDP, one 8-GPU node
#   METHOD=grpo BUDGET=0.5 ENGINE=megatron bash recipes/qwen3_1p7b.sh trainer.total_training_steps=20
#   DRY_RUN=1 METHOD=dapo bash recipes/qwen3_1p7b.sh            # compose + check only (no GPU)
# Environment: recipes/common.sh. Data: what `duet-verl prepare-data` wrote into DATA_DIR.
set -euo pipefail
MODEL=${MODEL:-Qwen/Qwen3-1.7B-Base}
source "$(dirname "$0")/common.sh"
FAMILY_ARGS=()
recipe_run "$@"
