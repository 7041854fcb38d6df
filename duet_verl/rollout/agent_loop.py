"""DUET's single-turn agent loop: verl's ``SingleTurnAgentLoop`` plus the per-rollout stop rule.

The trainer puts a prompt-level rule in the dataset column ``duet_stop_rule`` (absent on validation
batches). For each rollout this loop completes it (per-rollout seed from the run seed, the step and
``"{prompt index}/{session}"``, the end-of-turn token, how many log-probs to ask for), sends it to the
server in ``sampling_params["extra_args"]["duet"]``, and afterwards:

* masks the synthetic end-of-turn token of a stopped rollout (its log-prob was never computed);
* flattens the server's record into ``extra_fields``: ``duet_outcome``, ``duet_marker_at``,
  ``duet_length_explored``, ``duet_monitor_ns`` (the trainer reads them from TransferQueue).

Without a rule (validation, or DUET disabled) it behaves exactly like ``single_turn_agent``.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from duet_verl.core.controller import rollout_stop_rule
from duet_verl.core.monitor import Outcome

__all__ = ["DUET_AGENT_LOOP", "DuetSingleTurnAgentLoop", "apply_duet_record"]

DUET_AGENT_LOOP = "duet_single_turn"
RULE_COLUMN = "duet_stop_rule"


def apply_duet_record(output: AgentLoopOutput, record: dict[str, Any] | None) -> None:
    """Mask a synthetic end-of-turn token and copy the monitor's record into flat ``extra_fields`` keys."""
    fields = output.extra_fields
    if record is None:
        fields["duet_outcome"] = Outcome.NATURAL_EOS.value
        return
    fields["duet_outcome"] = record["outcome"]
    fields["duet_marker_at"] = record.get("marker_at")
    fields["duet_length_explored"] = bool(record.get("length_explored", False))
    fields["duet_monitor_ns"] = int(record.get("monitor_ns", 0))
    fields["duet_abort_failed"] = bool(record.get("abort_failed", False))
    position = int(record.get("length", -1))  # the appended token follows the `length` generated ones
    if record.get("synthetic_eos") and 0 <= position < len(output.response_mask):
        output.response_mask[position] = 0
        if output.response_logprobs is not None:
            output.response_logprobs[position] = 0.0


@register(DUET_AGENT_LOOP)
class DuetSingleTurnAgentLoop(SingleTurnAgentLoop):
    """Single-turn chat completion with DUET's stop/abort rule."""

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        prompt_rule = kwargs.get(RULE_COLUMN)
        if not prompt_rule:
            output = await super().run(sampling_params, **kwargs)
            apply_duet_record(output, None)
            return output
        rule = rollout_stop_rule(prompt_rule, f"{kwargs.get('index')}/{kwargs.get('session_id', 0)}")
        rule["eos_token_id"] = self._end_of_turn_id()
        extra = dict(sampling_params.get("extra_args") or {})
        extra["duet"] = rule
        output = await super().run({**sampling_params, "extra_args": extra}, **kwargs)
        apply_duet_record(output, output.extra_fields.get("duet"))
        return output

    def _end_of_turn_id(self) -> int:
        tokenizer = self.tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            raise ValueError("DUET's stop rule needs tokenizer.eos_token_id to end a stopped rollout")
        return int(eos)
