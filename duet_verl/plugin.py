"""Registration of DUET's pieces in verl's registries (entry point ``verl.plugins: duet_verl``).

``import verl`` imports this module in every process (driver, TaskRunner, workers, rollout servers).
verl only logs plug-in import errors at DEBUG level, so :func:`assert_registered` is called by the
entry point and the trainer to fail loudly when registration did not happen.
``VERL_USE_EXTERNAL_MODULES=duet_verl.plugin`` is the fallback for installs without entry points.
:func:`assert_registered` checks verl's registries themselves, so it fails wherever it is called if they lack
DUET's entries, whatever this module's own state.
"""

from __future__ import annotations

__all__ = ["assert_registered", "register"]


def _load_duet_vllm_replica():
    from duet_verl.adapters.vllm_server import DuetvLLMReplica

    return DuetvLLMReplica


def register() -> None:
    """Register the CPU platform/engines, the ``duet_grpo`` estimator, the ``duet_single_turn`` agent loop and
    the DUET vLLM replica (rollout ``vllm``, on GPUs and on vLLM's CPU build alike)."""
    from duet_verl.cpu.platform import register_cpu_backend

    register_cpu_backend()  # first: before anything asks verl for its platform
    from verl.trainer.ppo.core_algos import register_adv_est
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from duet_verl.adapters.estimator import DUET_ESTIMATOR, compute_duet_grpo_advantage

    register_adv_est(DUET_ESTIMATOR)(compute_duet_grpo_advantage)  # re-registering the same function is allowed
    import duet_verl.adapters.agent_loop  # noqa: F401  (registers the agent loop)

    RolloutReplicaRegistry.register("vllm", _load_duet_vllm_replica)


def assert_registered() -> None:
    """Raise ``RuntimeError`` unless DUET's estimator, agent loop and vLLM replica are registered in verl."""
    from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY

    from duet_verl.adapters.agent_loop import DUET_AGENT_LOOP
    from duet_verl.adapters.compat import agent_loop_names, rollout_replica_loader
    from duet_verl.adapters.estimator import DUET_ESTIMATOR, compute_duet_grpo_advantage

    missing = []
    if ADV_ESTIMATOR_REGISTRY.get(DUET_ESTIMATOR) is not compute_duet_grpo_advantage:
        missing.append(f"advantage estimator '{DUET_ESTIMATOR}'")
    if DUET_AGENT_LOOP not in agent_loop_names():
        missing.append(f"agent loop '{DUET_AGENT_LOOP}'")
    if rollout_replica_loader("vllm") is not _load_duet_vllm_replica:
        missing.append("the DUET vLLM replica (rollout 'vllm')")
    if missing:
        raise RuntimeError(
            "duet_verl is not registered in verl: missing " + ", ".join(missing) + ". Is duet-verl installed in this "
            "environment (its 'verl.plugins' entry point), or set VERL_USE_EXTERNAL_MODULES=duet_verl.plugin?"
        )


register()
