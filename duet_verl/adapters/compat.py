"""Every touch of a verl (or Ray) internal that DUET needs, in one place, for verl ``VERL_VERSION``.

Each function names the internal it relies on; ``tests/adapters/test_compat_on_cpu.py`` holds a contract test per
function that fails when verl changes it, so a verl upgrade is a change to this file and its tests. Everything else
in the package uses verl's public extension points (registries' ``register`` functions, trainer hooks, the
checkpoint callback).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "VERL_VERSION",
    "agent_loop_names",
    "build_agent_loop_manager",
    "checkpoint_folder",
    "engine_devices",
    "rollout_replica_loader",
    "set_replay_poll_interval",
]

VERL_VERSION = "0.9.1"


def agent_loop_names() -> set[str]:
    """Names in verl's agent-loop registry (``agent_loop._agent_loop_registry``; ``register`` has no reader)."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    return set(_agent_loop_registry)


def rollout_replica_loader(name: str) -> Callable[[], type] | None:
    """The loader registered for rollout ``name`` (``RolloutReplicaRegistry._registry``; no public getter
    returns the loader itself, and ``get`` calls it)."""
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    return RolloutReplicaRegistry._registry.get(name)


def engine_devices(model_type: str, backend: str) -> set[str]:
    """Devices for which an engine is registered (``EngineRegistry._engines[model_type][backend]``)."""
    from verl.workers.engine.base import EngineRegistry

    return set(EngineRegistry._engines.get(model_type, {}).get(backend, {}))


def build_agent_loop_manager(config: Any, trainer: Any) -> Any:
    """verl's agent-loop manager for ``trainer``, built by ``TaskRunnerV1.init_agent_loop_manager`` on an instance
    that is not a Ray actor (``TaskRunnerV1.__ray_actor_class__``), so DUET's trainer needs no copy of that logic."""
    from verl.trainer.main_ppo import TaskRunnerV1

    runner = TaskRunnerV1.__ray_actor_class__()
    runner.config, runner.trainer = config, trainer
    runner.init_agent_loop_manager()
    return runner.agent_loop_manager


def checkpoint_folder(trainer_config: Any, global_steps: int) -> str:
    """The ``global_step_N`` folder verl's ``PPOTrainer._load_checkpoint`` resumed from, by its own rule: the
    ``resume_from_path`` for ``resume_mode=resume_path``, else ``default_local_dir/global_step_{N}`` (relative paths
    against the working directory). verl does not expose the folder it chose."""
    if trainer_config.resume_mode == "resume_path":
        folder = trainer_config.resume_from_path
    else:
        folder = os.path.join(trainer_config.default_local_dir, f"global_step_{global_steps}")
    return folder if os.path.isabs(folder) else os.path.join(os.getcwd(), folder)


def set_replay_poll_interval(replay_buffer: Any, seconds: float) -> None:
    """How often verl's V1 ``ReplayBuffer`` checks whether a step's rollouts are done (``poll_interval``, a
    constructor default of 2 s that no config key reaches; ``_wait_for_next_poll`` sleeps it). On a CPU quickstart a
    step's generation takes 1–4 s, so the default rounds it up to the next multiple of 2 s."""
    if seconds <= 0:
        raise ValueError(f"trainer.v1.sampler.poll_interval must be > 0, got {seconds}")
    replay_buffer.poll_interval = float(seconds)
