"""The ``hf`` rollout backend for verl: a CPU rollout server in verl's hybrid mode.

* :class:`HFServerActor` — a Ray actor per replica serving :class:`~duet_verl.cpu.hf_server.HFRolloutServer`
  (token-in/token-out ``generate`` with DUET's stop/abort monitor, weight updates, sleep/wake no-ops).
* :class:`HFReplica` — verl's ``RolloutReplica`` for ``actor_rollout_ref.rollout.name=hf``.
* :class:`HFServerAdapter` — the ``BaseRollout`` living in each FSDP worker: verl's naive checkpoint engine
  hands it the trainer's weights (a generator every rank must consume, since FSDP gathers collectively);
  the first rank of each replica ships them to its server in one call.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput

__all__ = ["HFReplica", "HFServerActor", "HFServerAdapter", "server_name"]

logger = logging.getLogger(__name__)


def server_name(replica_rank: int, suffix: str = "") -> str:
    """Ray actor name of a replica's server."""
    return f"duet_hf_server_{replica_rank}{suffix}"


def _plain(cfg: Any, key: str, default: Any = None) -> Any:
    try:
        return cfg.get(key, default)
    except AttributeError:
        return getattr(cfg, key, default)


class HFServerActor:
    """One replica's rollout server (run as a Ray actor)."""

    def __init__(self, rollout_config: Any, model_config: Any, replica_rank: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from duet_verl.cpu.hf_server import HFRolloutServer

        path = _plain(model_config, "local_path") or _plain(model_config, "path")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.replica_rank = replica_rank
        self.server = HFRolloutServer(
            model,
            tokenizer,
            response_length=int(_plain(rollout_config, "response_length")),
            prompt_length=int(_plain(rollout_config, "prompt_length")),
        )
        self._paused = False

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, **kwargs):
        """verl's token-in/token-out call; while paused (``abort_all_requests``) requests return aborted."""
        if self._paused:
            return TokenOutput(token_ids=[], stop_reason="aborted", extra_fields={"global_steps": self.global_steps()})
        return await self.server.generate(prompt_ids, sampling_params, request_id, **kwargs)

    def global_steps(self) -> int:
        """The weight version stamped on outputs (0 before the first update)."""
        return int(self.server.global_steps or 0)

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load the trainer's weights."""
        await self.server.update_weights(state_dict, global_steps)

    async def set_global_steps(self, global_steps: int) -> None:
        """Record the weight version."""
        await self.server.set_global_steps(global_steps)

    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        """Stop accepting requests until :meth:`resume_generation` (running ones finish)."""
        self._paused = True
        return {"aborted": 0}

    async def resume_generation(self) -> None:
        """Accept requests again."""
        self._paused = False

    async def wake_up(self, tags: list[str] | None = None) -> None:
        """Nothing to reload on CPU."""

    async def sleep(self) -> None:
        """Nothing to free on CPU."""

    async def clear_kv_cache(self) -> None:
        """No KV cache is kept between steps."""

    async def release_kv_cache(self) -> None:
        """No KV cache is kept between steps."""

    async def resume_kv_cache(self) -> None:
        """No KV cache is kept between steps."""

    async def start_profile(self, **kwargs) -> None:
        """Profiling is not supported on this backend."""

    async def stop_profile(self) -> None:
        """Profiling is not supported on this backend."""


class HFReplica(RolloutReplica):
    """verl rollout replica backed by one :class:`HFServerActor`."""

    async def launch_servers(self) -> None:
        """Start (or reuse) this replica's named server actor."""
        name = server_name(self.replica_rank, self.name_suffix)
        server = ray.remote(HFServerActor).options(name=name, num_cpus=0, max_concurrency=1000, get_if_exists=True)
        handle = server.remote(self.config, self.model_config, self.replica_rank)
        self.servers = [handle]
        self._server_handle = handle
        self._server_address = f"hf-{self.replica_rank}{self.name_suffix}"


class HFServerAdapter(BaseRollout):
    """The rollout object in each FSDP worker: forwards the trainer's weights to its replica's server."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        world = self.config.tensor_model_parallel_size * self.config.data_parallel_size
        world *= self.config.pipeline_model_parallel_size
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.replica_rank = replica_rank if replica_rank >= 0 else rank // world
        self.is_leader = rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]) -> None:
        """Nothing to wake on CPU."""

    async def release(self) -> None:
        """Nothing to free on CPU."""

    async def update_weights(self, weights, global_steps: int | None = None, **kwargs) -> None:
        """Consume ``weights`` (on every rank) and send a full fp32 state dict from the replica leader."""
        state = {}
        for name, tensor in weights:
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            if self.is_leader:
                state[name] = full.detach().to("cpu", torch.float32).clone()
        if self.is_leader:
            server = self._server_handle()
            await asyncio.wrap_future(server.update_weights.remote(state, global_steps).future())
