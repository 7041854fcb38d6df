#!/usr/bin/env bash
# Launch a paper recipe (recipes/<RECIPE>.sh) in the duet-verl image on this machine's GPUs, with the prepared data
# (read-only), the checkpoints and the Hugging Face cache mounted from the host and the recipe's settings passed on.
#   DATA_DIR=~/data/duet CKPT_DIR=~/duet-checkpoints METHOD=duet BUDGET=0.5 bash docker/run.sh qwen3_1p7b [overrides]
#   IMAGE=duet-verl:0.1.0 (docker build -f docker/Dockerfile -t duet-verl:0.1.0 .); DOCKER=podman works too.
# On several nodes, run the Ray cluster inside the image (recipes/multinode.md) and this on the head node only.
set -euo pipefail
RECIPE=${1:?usage: bash docker/run.sh RECIPE [hydra overrides]  (RECIPE: qwen3_1p7b, qwen3_4b, llama3p2_3b)}
shift
[[ -f "$(dirname "$0")/../recipes/$RECIPE.sh" && $RECIPE != common ]] || {
  echo "docker/run.sh: RECIPE=$RECIPE: no recipes/$RECIPE.sh" >&2
  exit 2
}
DOCKER=${DOCKER:-docker}
IMAGE=${IMAGE:-duet-verl:0.1.0}
HOST_DATA=$(realpath -m "${DATA_DIR:-$HOME/data/duet}")
HOST_CKPT=$(realpath -m "${CKPT_DIR:-$PWD/checkpoints}")
HOST_HF=$(realpath -m "${HF_HOME:-$HOME/.cache/huggingface}")
mkdir -p "$HOST_CKPT" "$HOST_HF"

# the recipe's settings (recipes/common.sh) and the credentials a run may need, when set here
PASS=(
  METHOD BUDGET ENGINE NNODES NGPUS_PER_NODE GROUP EPOCHS TEST_FREQ SAVE_FREQ VAL_SETS MODEL PROJECT EXPERIMENT LOGGER
  ROLLOUT_TP MEGATRON_TP MEGATRON_PP DRY_RUN RAY_ADDRESS HF_TOKEN WANDB_API_KEY
)
ENV_ARGS=(-e DATA_DIR=/data/duet -e CKPT_DIR=/checkpoints -e HF_HOME=/root/.cache/huggingface)
for name in "${PASS[@]}"; do
  [[ -n ${!name+set} ]] && ENV_ARGS+=(-e "$name=${!name}")
done

exec "$DOCKER" run --rm --gpus all --net=host --ipc=host --shm-size=10g \
  -v "$HOST_DATA:/data/duet:ro" -v "$HOST_CKPT:/checkpoints" -v "$HOST_HF:/root/.cache/huggingface" \
  "${ENV_ARGS[@]}" "$IMAGE" bash "recipes/$RECIPE.sh" "$@"
