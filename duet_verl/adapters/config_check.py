"""Driver-side checks of a DUET run's configuration, before anything starts."""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from duet_verl.core.policies import POLICIES
from duet_verl.core.settings import DuetSettings
from duet_verl.cpu.platform import cpu_platform_wanted

__all__ = ["ConfigError", "check_config", "duet_settings_from_config"]

logger = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration DUET cannot run with; the message names the key."""


def duet_settings_from_config(config: DictConfig) -> DuetSettings:
    """Validated :class:`DuetSettings` from ``config.duet`` (checked against ``rollout.n``)."""
    section = config.get("duet", None)
    data = OmegaConf.to_container(section, resolve=True) if section is not None else {}
    return DuetSettings.from_mapping(data).validate(group_size=int(config.actor_rollout_ref.rollout.n))


def check_config(config: DictConfig) -> None:
    """Validate ``config.duet`` and the verl settings DUET relies on. Raises :class:`ConfigError`."""
    from duet_verl.adapters.agent_loop import DUET_AGENT_LOOP
    from duet_verl.adapters.estimator import DUET_ESTIMATOR

    try:
        settings = duet_settings_from_config(config)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    trainer = config.trainer
    if not trainer.get("use_v1", False):
        raise ConfigError("trainer.use_v1 must be true: DUET runs on verl's V1 trainer")
    if trainer.v1.trainer_mode != "sync":
        raise ConfigError(f"trainer.v1.trainer_mode must be 'sync' for DUET, got {trainer.v1.trainer_mode!r}")
    workers_env = (config.get("ray_kwargs") or {}).get("ray_init", {}).get("runtime_env", {}).get("env_vars", {})
    if str(workers_env.get("VERL_PLATFORM", "")).lower() == "cpu" and not cpu_platform_wanted():
        raise ConfigError(
            "ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM=cpu asks for a CPU run, but this process was "
            "started without it: export VERL_PLATFORM=cpu (the plug-in's CPU backend is opt-in)"
        )
    poll = config.trainer.v1.sampler.get("poll_interval")
    if poll is not None and not (isinstance(poll, int | float) and poll > 0):
        raise ConfigError(f"trainer.v1.sampler.poll_interval={poll!r}: seconds between replay-buffer polls, > 0")
    if not settings.enable:
        return
    algorithm = config.algorithm
    if algorithm.adv_estimator != DUET_ESTIMATOR:
        raise ConfigError(
            f"algorithm.adv_estimator must be '{DUET_ESTIMATOR}' when duet.enable=true, got {algorithm.adv_estimator!r}"
        )
    if (algorithm.get("filter_groups") or {}).get("enable", False):
        raise ConfigError(
            "algorithm.filter_groups.enable=true (DAPO dynamic sampling) cannot be combined with duet.enable=true: "
            "verl refills a step's batch through _next_train_batch, which DUET plans once per step, so the token "
            "budget and the importance weights of refilled prompts would be wrong; use one or the other"
        )
    megatron = config.actor_rollout_ref.actor.get("megatron") or {}
    if int(megatron.get("context_parallel_size", 1) or 1) > 1:
        raise ConfigError(
            "actor_rollout_ref.actor.megatron.context_parallel_size > 1 cannot be combined with duet.enable=true: "
            "DUET's steps have a variable number of rollouts, and verl 0.9.1 pads such batches with rows that its "
            "Megatron context-parallel path does not handle; use context_parallel_size=1"
        )
    if algorithm.get("use_kl_in_reward", False):
        raise ConfigError("algorithm.use_kl_in_reward is not supported with duet_grpo; use actor.use_kl_loss")
    rollout = config.actor_rollout_ref.rollout
    monitors = settings.stop.enable and POLICIES[settings.policy].monitors  # the stop/abort rule runs in rollout
    if monitors and rollout.agent.default_agent_loop != DUET_AGENT_LOOP:
        raise ConfigError(
            f"actor_rollout_ref.rollout.agent.default_agent_loop must be '{DUET_AGENT_LOOP}' when duet.stop.enable=true"
        )
    if monitors and rollout.get("enable_rollout_routing_replay", False):
        raise ConfigError(
            "actor_rollout_ref.rollout.enable_rollout_routing_replay=true cannot be combined with "
            "duet.stop.enable=true: a stopped rollout ends with an end-of-turn token the engine never routed, "
            "and a cut rollout's recorded experts no longer match its tokens; set duet.stop.enable=false "
            "(allocation only) or turn routing replay off"
        )
    cap = int(config.data.get("max_response_length", 0) or 0)
    if settings.policy == "arrol" and cap and settings.arrol.detect_at >= cap:
        raise ConfigError(
            f"duet.arrol.detect_at={settings.arrol.detect_at} must be below data.max_response_length={cap}: no rollout "
            "would reach the probe, and ARRoL would never prune"
        )
    if monitors and rollout.name != "vllm":
        raise ConfigError(f"actor_rollout_ref.rollout.name={rollout.name!r}: DUET's stop rule runs in 'vllm'")
    if not config.actor_rollout_ref.actor.get("use_dynamic_bsz", False):
        logger.warning(
            "DUET varies the number of rollouts per step; actor_rollout_ref.actor.use_dynamic_bsz=true is recommended"
        )
