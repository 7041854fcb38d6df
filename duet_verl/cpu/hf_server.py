"""A verl-compatible rollout server on :class:`~duet_verl.cpu.hf_engine.HFStreamingEngine` (token in, token out).

``generate`` has the signature of verl's vLLM server and returns verl's ``TokenOutput``; DUET's stop rule is
applied exactly as in :class:`duet_verl.adapters.vllm_server.DuetvLLMHttpServer`, through the same
``split_duet_rule`` / ``monitored_generate`` / ``with_monitor`` helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from verl.workers.rollout.replica import TokenOutput

from duet_verl.adapters.stream_monitor import ABORT_FINISH_REASON, monitored_generate, split_duet_rule, with_monitor
from duet_verl.cpu.hf_engine import HFSamplingParams, HFStreamingEngine

__all__ = ["HFRolloutServer"]


class HFRolloutServer:
    """Serves one Hugging Face causal LM; weights are replaced by :meth:`update_weights`."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, response_length: int, prompt_length: int = 1 << 30):
        self.engine = HFStreamingEngine(model, tokenizer)
        self.response_length, self.prompt_length = response_length, prompt_length
        self.global_steps: int | None = None
        self._generate = monitored_generate(self.engine.generate)

    async def generate(
        self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str, **kwargs: Any
    ) -> TokenOutput:
        """Generate one completion; kwargs verl passes for other engines (images, priority, ...) are ignored."""
        params, request = split_duet_rule(dict(sampling_params))
        return await with_monitor(request, self._plain(prompt_ids, params, request_id))

    async def _plain(self, prompt_ids: list[int], params: dict[str, Any], request_id: str) -> TokenOutput:
        budget = self.prompt_length + self.response_length - len(prompt_ids)
        sampling = HFSamplingParams.from_dict(params, default_max_tokens=max(1, min(self.response_length, budget)))
        final = None
        async for output in self._generate(list(prompt_ids), sampling, request_id):
            final = output
        completion = final.outputs[0]
        token_ids = list(completion.token_ids)
        log_probs = None
        if sampling.logprobs is not None and completion.logprobs is not None:
            log_probs = [completion.logprobs[i][t].logprob for i, t in enumerate(token_ids)]
        reason = completion.finish_reason
        stop_reason = "completed" if reason in ("stop", "length") else reason or ABORT_FINISH_REASON
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs,
            stop_reason=stop_reason,
            extra_fields={"global_steps": self.global_steps},
        )

    async def update_weights(self, state_dict: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load new weights (from the trainer) and record their version."""
        self.engine.load_state_dict(state_dict)
        if global_steps is not None:
            self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        """Record the weight version stamped on outputs (verl reads ``extra_fields["global_steps"]``)."""
        self.global_steps = global_steps
