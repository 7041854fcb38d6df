#!/usr/bin/env bash
# The CPU quickstart's DUET run as a plain recipe: tiny local model, synthetic tasks, verl on the CPU.
# Build the assets first with `duet-verl quickstart --steps 1 --policies duet@0.5 --out duet_quickstart`.
set -euo pipefail
export VERL_PLATFORM=cpu  # verl's platform override: the plug-in's CPU backend is opt-in
OUT=${OUT:-duet_quickstart}
CPU=($(python3 -c "from duet_verl.cpu.overrides import cpu_overrides; print(' '.join(cpu_overrides()))"))
python3 -m duet_verl.main "${CPU[@]}" \
  data.train_files="$OUT/assets/train.parquet" data.val_files="$OUT/assets/val.parquet" \
  data.train_batch_size=16 data.max_prompt_length=64 data.max_response_length=128 \
  actor_rollout_ref.model.path="$OUT/assets/model" actor_rollout_ref.actor.optim.lr=2e-4 \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 actor_rollout_ref.actor.use_dynamic_bsz=True \
  actor_rollout_ref.actor.use_kl_loss=False actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=True \
  reward.custom_reward_function.path="$(python3 -c 'import duet_verl.demo.reward as r; print(r.__file__)')" \
  reward.custom_reward_function.name=compute_score \
  trainer.logger='[console,file]' trainer.total_training_steps=16 trainer.test_freq=4 trainer.save_freq=-1 \
  duet.budget=0.5 duet.stop.min_tokens=16 duet.stop.grace=16 duet.gates.update_every=2 \
  "$@"
