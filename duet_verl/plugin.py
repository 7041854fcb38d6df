"""Registration of DUET's pieces in verl's registries (entry point ``verl.plugins: duet_verl``).

``import verl`` imports this module in every process (driver, TaskRunner, workers, rollout servers).
verl only logs plug-in import errors at DEBUG level, so :func:`assert_registered` is called by the
entry point and the trainer to fail loudly when registration did not happen.
``VERL_USE_EXTERNAL_MODULES=duet_verl.plugin`` is the fallback for installs without entry points.
"""

from __future__ import annotations

import logging

__all__ = ["assert_registered", "register"]

logger = logging.getLogger(__name__)

_REGISTERED = False


def _load_duet_vllm_replica():
    from duet_verl.rollout.vllm_server import DuetvLLMReplica

    return DuetvLLMReplica


def _load_hf_replica():
    from duet_verl.cpu.hf_rollout import HFReplica

    return HFReplica


def register() -> None:
    """Register the CPU platform/engines, the ``duet_grpo`` estimator, the ``duet_single_turn`` agent loop,
    the DUET vLLM replica and the ``hf`` (CPU) rollout backend."""
    global _REGISTERED
    if _REGISTERED:
        return
    from duet_verl.cpu.platform import register_cpu_backend

    register_cpu_backend()  # first: before anything asks verl for its platform
    from verl.trainer.ppo.core_algos import register_adv_est
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from duet_verl.algos import DUET_ESTIMATOR, compute_duet_grpo_advantage

    register_adv_est(DUET_ESTIMATOR)(compute_duet_grpo_advantage)
    import duet_verl.rollout.agent_loop  # noqa: F401  (registers the agent loop)

    RolloutReplicaRegistry.register("vllm", _load_duet_vllm_replica)
    RolloutReplicaRegistry.register("hf", _load_hf_replica)
    from verl.workers.rollout import base as rollout_base

    # verl has no register function for rollout adapters: this dict is the registry (key: (name, mode)).
    rollout_base._ROLLOUT_REGISTRY[("hf", "async")] = "duet_verl.cpu.hf_rollout.HFServerAdapter"
    _REGISTERED = True


def assert_registered() -> None:
    """Raise ``RuntimeError`` unless DUET's estimator, agent loop and vLLM replica are registered in verl."""
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from duet_verl.algos import DUET_ESTIMATOR
    from duet_verl.rollout.agent_loop import DUET_AGENT_LOOP

    missing = []
    if DUET_ESTIMATOR not in ADV_ESTIMATOR_REGISTRY:
        missing.append(f"advantage estimator '{DUET_ESTIMATOR}'")
    if DUET_AGENT_LOOP not in _agent_loop_registry:
        missing.append(f"agent loop '{DUET_AGENT_LOOP}'")
    if RolloutReplicaRegistry._registry.get("vllm") is not _load_duet_vllm_replica:
        missing.append("the DUET vLLM replica (rollout 'vllm')")
    if RolloutReplicaRegistry._registry.get("hf") is not _load_hf_replica:
        missing.append("the CPU rollout backend (rollout 'hf')")
    if missing:
        raise RuntimeError(
            "duet_verl is not registered in verl: missing " + ", ".join(missing) + ". Is duet-verl installed in this "
            "environment (its 'verl.plugins' entry point), or set VERL_USE_EXTERNAL_MODULES=duet_verl.plugin?"
        )


register()
