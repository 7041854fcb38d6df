"""The hydra overrides that run verl's V1 trainer on a CPU-only machine (used by the quickstart and the tests).

Each line has a reason:

* Ray gets more *logical* CPUs than cores (TransferQueue, the task runner, the agent-loop and reward workers
  each ask for CPUs) and logical GPUs for verl's worker slots (the CPU platform names them ``GPU``).
* ``VERL_PLATFORM=cpu`` in the Ray workers' environment (:data:`CPU_ENV`; the driver needs it too, before
  ``import verl``: the quickstart and ``recipes/run_duet_tiny_cpu.sh`` set it).
* One TransferQueue storage unit instead of eight.
* verl's replay buffer checks for finished rollouts every 0.1 s instead of 2 s (``trainer.v1.sampler.poll_interval``,
  read by DUET's trainer): a CPU step generates for 1–4 s, which the 2 s poll would round up.
* Rollouts with verl's vLLM server and DUET's monitor on vLLM's CPU build (:data:`VLLM_CPU` says why each vLLM
  setting); FSDP2 (FSDP1 needs a GPU);
  SDPA attention (flash-attention is CUDA-only); no remove-padding kernels.

:func:`gpu_overrides` runs the same small run on CUDA GPUs (:data:`SMALL_RUN` is what both share).
"""

from __future__ import annotations

__all__ = ["CPU_ENV", "cpu_overrides", "gpu_overrides"]

# The environment a CPU run needs in every process (driver and Ray workers): verl's platform override, which is
# what turns the plug-in's CPU backend on (it is never chosen from the absence of a GPU).
CPU_ENV = {"VERL_PLATFORM": "cpu"}


# vLLM's CPU backend in verl's hybrid engine: no CUDA graphs, no sleep mode (it frees GPU memory), the KV cache
# kept between steps, real weights loaded at start (then synced in place from the trainer each step), and whole
# prefills: after a partial prefill vLLM 0.24 rewinds a seeded request's generator by an offset, which CPU
# generators lack ("CPU Generator does not use offset"), so seeded evaluation samples need unchunked prompts.
VLLM_CPU = [
    "actor_rollout_ref.rollout.enforce_eager=True",
    "actor_rollout_ref.rollout.enable_chunked_prefill=False",
    "+actor_rollout_ref.rollout.enable_sleep_mode=False",
    "actor_rollout_ref.rollout.free_cache_engine=False",
    "actor_rollout_ref.rollout.load_format=auto",
]


# What a small single-node run sets on any device: one TransferQueue storage unit, a 0.1 s replay-buffer poll, verl's
# vLLM server, one rollout replica per trainer process, FSDP2 with SDPA attention and no remove-padding kernels.
SMALL_RUN = [
    "trainer.nnodes=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    "+trainer.v1.sampler.poll_interval=0.1",
    "actor_rollout_ref.rollout.name=vllm",
    "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "actor_rollout_ref.actor.strategy=fsdp2",
    "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
    "actor_rollout_ref.model.use_remove_padding=False",
    "data.dataloader_num_workers=0",
    "data.filter_overlong_prompts=False",
]


def cpu_overrides(world_size: int = 1, ray_cpus: int = 16) -> list[str]:
    """Overrides for ``python -m duet_verl.main`` on CPU with ``world_size`` trainer processes."""
    return [
        f"ray_kwargs.ray_init.num_cpus={ray_cpus}",
        f"++ray_kwargs.ray_init.num_gpus={world_size}",
        f"trainer.n_gpus_per_node={world_size}",
        *(f"+ray_kwargs.ray_init.runtime_env.env_vars.{k}={v}" for k, v in CPU_ENV.items()),
        *SMALL_RUN,
        *VLLM_CPU,
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.1",
    ]


def gpu_overrides(world_size: int = 1) -> list[str]:
    """The same small run on ``world_size`` CUDA GPUs of one node (``scripts/gpu_check.sh``'s training check): Ray
    finds the GPUs itself; vLLM skips CUDA-graph capture (a few steps do not repay it) and takes 30 % of each GPU."""
    return [
        f"trainer.n_gpus_per_node={world_size}",
        *SMALL_RUN,
        "actor_rollout_ref.rollout.enforce_eager=True",
        "actor_rollout_ref.rollout.gpu_memory_utilization=0.3",
    ]
