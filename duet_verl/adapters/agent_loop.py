"""DUET's single-turn agent loop: verl's ``SingleTurnAgentLoop`` plus the per-rollout stop rule.

The trainer puts a :class:`~duet_verl.core.protocol.PromptStopRule` in the batch column ``duet_stop_rule``
(absent on validation batches). For each rollout this loop derives its
:class:`~duet_verl.core.protocol.RolloutStopRule` (seed from the run seed, the step and
``"{prompt index}/{session}"``; the tokenizer's end-of-turn token), sends it to the server in
``sampling_params["extra_args"]["duet"]``, and afterwards masks the synthetic end-of-turn token of a stopped
rollout (its log-prob was never computed). The server's :class:`~duet_verl.core.protocol.RolloutReport` stays in
``extra_fields["duet"]``, where the trainer reads it from TransferQueue; a rollout without a rule gets an
unmonitored report, so every trajectory carries one.

A row with the data column ``duet_sampling_seed`` (:data:`~duet_verl.core.protocol.SAMPLING_SEED_COLUMN`) is
sampled with a vLLM seed per sample (:func:`~duet_verl.core.rng.sample_seed` of the row's value and the session
number), so evaluating the same model twice gives the same generations; rows without it sample freely.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from duet_verl.core.protocol import RULE_COLUMN, SAMPLING_SEED_COLUMN, WIRE_KEY, PromptStopRule, RolloutReport
from duet_verl.core.rng import sample_seed

__all__ = ["DUET_AGENT_LOOP", "DuetSingleTurnAgentLoop", "apply_report"]

DUET_AGENT_LOOP = "duet_single_turn"


def apply_report(output: AgentLoopOutput, report: RolloutReport) -> None:
    """Mask a synthetic end-of-turn token out of the loss and store the report in ``extra_fields["duet"]``."""
    position = report.length  # the appended token follows the `length` generated ones
    if report.synthetic_eos and 0 <= position < len(output.response_mask):
        output.response_mask[position] = 0
        if output.response_logprobs is not None:
            output.response_logprobs[position] = 0.0
    output.extra_fields[WIRE_KEY] = report.to_dict()


@register(DUET_AGENT_LOOP)
class DuetSingleTurnAgentLoop(SingleTurnAgentLoop):
    """Single-turn chat completion with DUET's stop/abort rule."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        row_seed = kwargs.get(SAMPLING_SEED_COLUMN)
        if row_seed is not None:
            sampling_params = {**sampling_params, "seed": sample_seed(int(row_seed), int(kwargs.get("session_id", 0)))}
        prompt_rule = kwargs.get(RULE_COLUMN)
        if not prompt_rule:
            output = await super().run(sampling_params, **kwargs)
            apply_report(output, RolloutReport.unmonitored(length=sum(output.response_mask)))
            return output
        rollout_id = f"{kwargs.get('index')}/{kwargs.get('session_id', 0)}"
        rule = PromptStopRule.from_dict(prompt_rule).for_rollout(rollout_id, self._end_of_turn_id())
        extra = {**(sampling_params.get("extra_args") or {}), WIRE_KEY: rule.to_dict()}
        output = await super().run({**sampling_params, "extra_args": extra}, **kwargs)
        report = output.extra_fields.get(WIRE_KEY)
        if report is None:
            raise RuntimeError(
                "the rollout server returned no DUET report: actor_rollout_ref.rollout.name must select a server "
                "that runs DUET's stop rule (the plug-in registers it as 'vllm')"
            )
        apply_report(output, RolloutReport.from_dict(report))
        return output

    def _end_of_turn_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("DUET's stop rule needs tokenizer.eos_token_id to end a stopped rollout")
        return int(eos)
