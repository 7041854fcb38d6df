# Shared settings of the recipes (sourced). Paper settings: SPEC §5 / README "Recipes".
MODEL=${MODEL:-Qwen/Qwen3-1.7B-Base}
TRAIN_FILES=${TRAIN_FILES:-$HOME/data/math/train.parquet}
VAL_FILES=${VAL_FILES:-$HOME/data/math500/test.parquet}
GROUP=${GROUP:-8}
NGPUS=${NGPUS:-8}

DATA=(
  data.train_files="$TRAIN_FILES" data.val_files="$VAL_FILES"
  data.train_batch_size=128 data.max_prompt_length=512 data.max_response_length=3072
  data.filter_overlong_prompts=True data.truncation=error
)
MODEL_ARGS=(
  actor_rollout_ref.model.path="$MODEL" actor_rollout_ref.model.use_remove_padding=True
  actor_rollout_ref.model.enable_gradient_checkpointing=True
)
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
  actor_rollout_ref.rollout.tensor_model_parallel_size=1 actor_rollout_ref.rollout.gpu_memory_utilization=0.6
  actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True
  actor_rollout_ref.rollout.val_kwargs.n=4 actor_rollout_ref.rollout.val_kwargs.do_sample=True
  actor_rollout_ref.rollout.val_kwargs.temperature=0.9 actor_rollout_ref.rollout.val_kwargs.top_p=0.95
)
# The cosine schedule: FSDP's optimizer schema calls it lr_scheduler_type, Megatron's lr_decay_style (verl 0.9.1).
FSDP_SCHEDULE=(actor_rollout_ref.actor.optim.lr_scheduler_type=cosine)
MEGATRON_SCHEDULE=(actor_rollout_ref.actor.optim.lr_decay_style=cosine)
REF=(
  actor_rollout_ref.ref.log_prob_use_dynamic_bsz=True
)
TRAINER=(
  trainer.logger='[console,wandb,file]' trainer.project_name=duet_verl
  trainer.n_gpus_per_node="$NGPUS" trainer.nnodes=1 trainer.total_epochs=4
  trainer.save_freq=50 trainer.test_freq=10 trainer.val_before_train=True
)
