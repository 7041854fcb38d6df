# Shared part of the paper recipes, sourced by recipes/<family>.sh after it set its family's defaults.
# The paper's settings (SPEC §5): ~7.5k cleaned MATH problems, 128 prompts x G=8 per step, PPO mini-batch of 512
# responses (64 prompts x 8), lr 3e-6 cosine with 10 % warmup, clip 0.2, low-var KL loss 0.001, temperature 0.9,
# top-p 0.95, prompts <= 512 and responses <= 3072 tokens, 4 epochs, mean@4 validation; one 8-GPU node.
#
# Environment (default in brackets); a bad value exits with status 2 naming the variable:
#   METHOD          duet | grpo | dapo | uniform | greso | vip | arrol                  [duet]
#                   (uniform, greso, vip, arrol: the budget-aware baselines as duet.policy, README "Budget-aware
#                   baselines"; VIP's paper bounds [4, 16] are GROUP=16, whose budget is b x 16 rollouts' tokens)
#   BUDGET          token budget fraction b in (0, 1]: duet.budget for DUET and the baselines; GRPO and DAPO get
#                   round(b*G) rollouts per prompt (the same token budget with fewer rollouts) [1.0]
#   ENGINE          fsdp | megatron (verl's training engine; the rollout is vLLM either way) [fsdp]
#   NNODES, NGPUS_PER_NODE   Ray cluster size (recipes/multinode.md for more than one node) [1, 8]
#   DATA_DIR        what `duet-verl prepare-data` wrote                                    [$HOME/data/duet]
#   VAL_SETS        test sets validated on, files $DATA_DIR/<name>.parquet
#                                                         [math500 aime2024 gsm8k humaneval gpqa_diamond]
#   CKPT_DIR        checkpoints and metrics.jsonl go to $CKPT_DIR/$PROJECT/$EXPERIMENT      [$PWD/checkpoints]
#   MODEL, GROUP (G), EPOCHS, TEST_FREQ, SAVE_FREQ, ROLLOUT_TP, MEGATRON_TP, MEGATRON_PP, PROJECT, EXPERIMENT,
#   LOGGER ([console,file]; add wandb with WANDB_API_KEY set), TRAIN_FILE, REWARD_FILE, PYTHON
#   DRY_RUN=1       compose the full config and run DUET's and verl's checks, then exit 0 (no GPU, no data needed);
#                   DRY_RUN_CONFIG=FILE also saves the resolved config there.
# Extra arguments are hydra overrides appended last (they win).

recipe_fail() {
  echo "duet-verl recipe: $*" >&2
  exit 2
}

PYTHON=${PYTHON:-python3}
METHOD=${METHOD:-duet}
BUDGET=${BUDGET:-1.0}
ENGINE=${ENGINE:-fsdp}
NNODES=${NNODES:-1}
NGPUS_PER_NODE=${NGPUS_PER_NODE:-8}
GROUP=${GROUP:-8}
EPOCHS=${EPOCHS:-4}
TEST_FREQ=${TEST_FREQ:-10}
SAVE_FREQ=${SAVE_FREQ:-50}
ROLLOUT_TP=${ROLLOUT_TP:-1}
MEGATRON_TP=${MEGATRON_TP:-1}
MEGATRON_PP=${MEGATRON_PP:-1}
DATA_DIR=${DATA_DIR:-$HOME/data/duet}
VAL_SETS=${VAL_SETS:-math500 aime2024 gsm8k humaneval gpqa_diamond}
PROJECT=${PROJECT:-duet_verl}
CKPT_DIR=${CKPT_DIR:-$PWD/checkpoints}
LOGGER=${LOGGER:-[console,file]}
: "${MODEL:?the family script sets MODEL}"

case "$METHOD" in
  duet | grpo | dapo | uniform | greso | vip | arrol) ;;
  *) recipe_fail "METHOD=$METHOD: must be duet, grpo, dapo, uniform, greso, vip or arrol" ;;
esac
case "$ENGINE" in fsdp | megatron) ;; *) recipe_fail "ENGINE=$ENGINE: must be fsdp or megatron" ;; esac
for var in NNODES NGPUS_PER_NODE GROUP EPOCHS ROLLOUT_TP MEGATRON_TP MEGATRON_PP; do
  [[ ${!var} =~ ^[1-9][0-9]*$ ]] || recipe_fail "$var=${!var}: must be a positive integer"
done
# round(b * G) rollouts per prompt for the baselines (at least 1), and the budget's range for every method
N_BASELINE=$("$PYTHON" -c "
import sys
try:
    b = float(sys.argv[1])
except ValueError:
    b = float('nan')
print(max(1, round(b * int(sys.argv[2]))) if 0 < b <= 1 else 'bad')" "$BUDGET" "$GROUP") \
  || recipe_fail "PYTHON=$PYTHON does not run"
[[ $N_BASELINE == bad ]] && recipe_fail "BUDGET=$BUDGET: must be a number in (0, 1]"

TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/math_train.parquet}
VAL_FILES=()
for name in $VAL_SETS; do VAL_FILES+=("'$DATA_DIR/$name.parquet'"); done
(( ${#VAL_FILES[@]} > 0 )) || recipe_fail "VAL_SETS is empty: name at least one test set"
# verl's custom-reward entry point of the installed package: compute_score, dispatching on data_source
PACKAGE_DIR=$("$PYTHON" -c 'import duet_verl, os; print(os.path.dirname(duet_verl.__file__))') \
  || recipe_fail "PYTHON=$PYTHON cannot import duet_verl"
REWARD_FILE=${REWARD_FILE:-$PACKAGE_DIR/verifiers/__init__.py}
if [[ ${DRY_RUN:-0} != 1 ]]; then
  for file in "$TRAIN_FILE" "${VAL_FILES[@]//\'/}"; do
    [[ -f $file ]] || recipe_fail "$file is missing: \`duet-verl prepare-data\` writes the data (DATA_DIR=$DATA_DIR)"
  done
  [[ -f $REWARD_FILE ]] || recipe_fail "REWARD_FILE=$REWARD_FILE is missing: the verifiers of duet_verl (compute_score)"
fi
EXPERIMENT=${EXPERIMENT:-${METHOD}_b${BUDGET}_${ENGINE}_$(basename "$MODEL")}
# checkpoints (global_step_N/, with DUET's duet_state.json) and verl's file-logger metrics.jsonl, which
# `duet-verl report $RUN_DIR` plots; on several nodes CKPT_DIR must be on a filesystem every node sees
RUN_DIR=$CKPT_DIR/$PROJECT/$EXPERIMENT
[[ ${DRY_RUN:-0} == 1 ]] || mkdir -p "$RUN_DIR"

DATA=(
  data.train_files="'$TRAIN_FILE'" "data.val_files=[$(IFS=,; echo "${VAL_FILES[*]}")]"
  data.train_batch_size=128 data.max_prompt_length=512 data.max_response_length=3072
  data.filter_overlong_prompts=True data.truncation=error
)
MODEL_ARGS=(
  actor_rollout_ref.model.path="$MODEL" actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
)
# ppo_mini_batch_size counts prompts: 64 x G=8 = the paper's 512 responses
ACTOR=(
  actor_rollout_ref.actor.optim.lr=3e-6 actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0.1
  actor_rollout_ref.actor.ppo_mini_batch_size=64
  actor_rollout_ref.actor.use_dynamic_bsz=True actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384
  actor_rollout_ref.actor.clip_ratio=0.2 actor_rollout_ref.actor.loss_agg_mode=token-mean
  actor_rollout_ref.actor.use_kl_loss=True actor_rollout_ref.actor.kl_loss_coef=0.001
  actor_rollout_ref.actor.kl_loss_type=low_var_kl actor_rollout_ref.actor.entropy_coeff=0
)
ROLLOUT=(
  actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n="$GROUP"
  actor_rollout_ref.rollout.temperature=0.9 actor_rollout_ref.rollout.top_p=0.95
  actor_rollout_ref.rollout.tensor_model_parallel_size="$ROLLOUT_TP"
  actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu=32768
  actor_rollout_ref.rollout.val_kwargs.n=4 actor_rollout_ref.rollout.val_kwargs.do_sample=True
  actor_rollout_ref.rollout.val_kwargs.temperature=0.9 actor_rollout_ref.rollout.val_kwargs.top_p=0.95
  actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True actor_rollout_ref.ref.log_prob_max_token_len_per_gpu=32768
)
REWARD=(reward.custom_reward_function.path="$REWARD_FILE" reward.custom_reward_function.name=compute_score)
TRAINER=(
  trainer.logger="$LOGGER" trainer.project_name="$PROJECT" trainer.experiment_name="$EXPERIMENT"
  trainer.nnodes="$NNODES" trainer.n_gpus_per_node="$NGPUS_PER_NODE" trainer.total_epochs="$EPOCHS"
  trainer.save_freq="$SAVE_FREQ" trainer.test_freq="$TEST_FREQ" trainer.val_before_train=True
  trainer.default_local_dir="$RUN_DIR"
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$RUN_DIR/metrics.jsonl"
)
# The cosine schedule is optim.lr_scheduler_type in verl 0.9.1's FSDP optimizer schema, lr_decay_style in Megatron's.
case "$ENGINE" in
  fsdp)
    ENGINE_ARGS=(
      actor_rollout_ref.actor.strategy=fsdp2 actor_rollout_ref.actor.optim.lr_scheduler_type=cosine
    )
    ;;
  megatron)
    ENGINE_ARGS=(
      model_engine=megatron actor_rollout_ref.actor.optim.lr_decay_style=cosine
      actor_rollout_ref.actor.megatron.tensor_model_parallel_size="$MEGATRON_TP"
      actor_rollout_ref.actor.megatron.pipeline_model_parallel_size="$MEGATRON_PP"
      actor_rollout_ref.ref.megatron.tensor_model_parallel_size="$MEGATRON_TP"
      actor_rollout_ref.ref.megatron.pipeline_model_parallel_size="$MEGATRON_PP"
    )
    ;;
esac
case "$METHOD" in
  duet)
    METHOD_ARGS=(
      algorithm.adv_estimator=duet_grpo actor_rollout_ref.rollout.agent.default_agent_loop=duet_single_turn
      duet.enable=true duet.budget="$BUDGET"
    )
    ;;
  uniform | greso | vip)
    # the same token accounting, metrics and checkpoint state as DUET, another allocation rule (core/policies)
    METHOD_ARGS=(algorithm.adv_estimator=duet_grpo duet.enable=true duet.policy="$METHOD" duet.budget="$BUDGET")
    ;;
  arrol)
    # ARRoL prunes inside the rollout server through DUET's monitor: DUET's agent loop carries its probe there
    METHOD_ARGS=(
      algorithm.adv_estimator=duet_grpo actor_rollout_ref.rollout.agent.default_agent_loop=duet_single_turn
      duet.enable=true duet.policy=arrol duet.budget="$BUDGET"
    )
    ;;
  grpo)
    METHOD_ARGS=(duet.enable=false algorithm.adv_estimator=grpo actor_rollout_ref.rollout.n="$N_BASELINE")
    ;;
  dapo)
    # DAPO's dynamic sampling as verl 0.9.1 configures it: drop groups whose rewards are all equal, generate more
    # batches (at most 10 per step) until the step is full. DUET refuses this filter
    # (duet_verl/adapters/config_check.py).
    METHOD_ARGS=(
      duet.enable=false algorithm.adv_estimator=grpo actor_rollout_ref.rollout.n="$N_BASELINE"
      algorithm.filter_groups.enable=true algorithm.filter_groups.metric=reward
      algorithm.filter_groups.max_num_gen_batches=10
    )
    ;;
esac

# Runs the trainer with everything above, then the family's FAMILY_ARGS, then the caller's overrides.
recipe_run() {
  exec "$PYTHON" -m duet_verl.main \
    "${ENGINE_ARGS[@]}" "${DATA[@]}" "${MODEL_ARGS[@]}" "${ACTOR[@]}" "${ROLLOUT[@]}" "${REWARD[@]}" \
    "${TRAINER[@]}" "${METHOD_ARGS[@]}" "${FAMILY_ARGS[@]}" "$@"
}
