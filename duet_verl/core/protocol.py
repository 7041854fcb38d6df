"""DUET's rollout protocol: the three messages that cross process boundaries, each defined once.

::

    trainer ──PromptStopRule──▶ agent loop ──RolloutStopRule──▶ rollout server
       ▲    (dataset column        │        (sampling_params        │
       │     ``duet_stop_rule``)   │         ["extra_args"]["duet"])│
       └──────── RolloutReport ◀───┴────────────────────────────────┘
            (TokenOutput / AgentLoopOutput / TransferQueue ``extra_fields["duet"]``)

They travel as plain dicts (Ray, TransferQueue and vLLM's ``extra_args`` carry plain Python); each end parses them
with ``from_dict``, which rejects unknown or missing keys. Nothing here imports verl or vLLM.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from duet_verl.core.monitor import MonitorRecord, Outcome, StopRuleConfig
from duet_verl.core.probe import ProbeRule
from duet_verl.core.rng import rollout_seed

__all__ = ["RULE_COLUMN", "SAMPLING_SEED_COLUMN", "WIRE_KEY", "PromptStopRule", "RolloutReport", "RolloutStopRule"]

RULE_COLUMN = "duet_stop_rule"  # the batch column the trainer fills and the agent loop reads
WIRE_KEY = "duet"  # key of the rollout rule in ``extra_args`` and of the report in ``extra_fields``
# an optional integer data column: rows that carry it are sampled with vLLM seeds derived from it and the sample's
# number (reproducible evaluation: the same model evaluated twice gives the same generations)
SAMPLING_SEED_COLUMN = "duet_sampling_seed"


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    """Reject unknown keys and missing ones; a field with a default may be missing (a message of an older version)."""
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown, missing = sorted(set(data) - names), sorted(required - set(data))
    if unknown or missing:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}, missing keys {missing}")


MAX_TOP_LOGPROBS = 20  # vLLM's default cap on returned log-probs per position


def _check_top_logprobs(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be an integer in [2, {MAX_TOP_LOGPROBS}], got {value!r}")


@dataclass(frozen=True)
class RolloutStopRule:
    """What the rollout server needs to run one rollout's stop/abort monitor."""

    monitor: StopRuleConfig  # the state machine's parameters, with this rollout's own seed
    eos_token_id: int  # appended when the monitor stops the rollout
    top_logprobs: int  # log-probs the engine must return per position (the signal reads the top 2)

    def __post_init__(self):
        _check_top_logprobs(self.top_logprobs)

    def to_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor.to_dict(), "eos_token_id": self.eos_token_id, "top_logprobs": self.top_logprobs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutStopRule:
        _check_keys(cls, data)
        monitor = StopRuleConfig.from_dict(data["monitor"])
        return cls(monitor, int(data["eos_token_id"]), int(data["top_logprobs"]))


@dataclass(frozen=True)
class PromptStopRule:
    """The stop rule the trainer plans for one prompt; each of its rollouts draws its own seed from it."""

    monitor: StopRuleConfig  # its ``seed`` is unused: see :meth:`for_rollout`
    top_logprobs: int
    run_seed: int
    step: int

    def __post_init__(self):
        _check_top_logprobs(self.top_logprobs)

    def with_marker_domains(self, domains: tuple[str, ...]) -> PromptStopRule:
        """The same rule looking for the answer markers of ``domains`` (the user regexes are kept)."""
        markers = replace(self.monitor.markers, domains=tuple(domains))
        return replace(self, monitor=replace(self.monitor, markers=markers))

    def with_probe(self, probe: ProbeRule | None, stop_abort: bool) -> PromptStopRule:
        """The same rule with ARRoL's pruning probe, and DUET's stop/abort on or off."""
        return replace(self, monitor=replace(self.monitor, probe=probe, stop_abort=stop_abort))

    def for_rollout(self, rollout_id: str, eos_token_id: int) -> RolloutStopRule:
        """The rule of one rollout: the seed depends only on (run seed, step, rollout id)."""
        seed = rollout_seed(self.run_seed, self.step, rollout_id)
        return RolloutStopRule(replace(self.monitor, seed=seed), int(eos_token_id), self.top_logprobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor.to_dict(),
            "top_logprobs": self.top_logprobs,
            "run_seed": self.run_seed,
            "step": self.step,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptStopRule:
        _check_keys(cls, data)
        monitor = StopRuleConfig.from_dict(data["monitor"])
        return cls(monitor, int(data["top_logprobs"]), int(data["run_seed"]), int(data["step"]))


@dataclass(frozen=True)
class RolloutReport:
    """How a rollout ended, as the rollout server saw it. Rollouts without a rule get :meth:`unmonitored`."""

    outcome: Outcome
    length: int  # tokens generated (the appended end-of-turn token not counted)
    marker_at: int | None = None  # the check at which an answer marker was first seen
    ended_at: int | None = None  # where the monitor decided (or the engine ended the request)
    length_explored: bool = False  # a confident stop was skipped with probability eps_len
    synthetic_eos: bool = False  # an end-of-turn token was appended (its position has no log-prob)
    abort_failed: bool = False  # the engine did not carry out a stop/abort; the rollout ran to its end
    monitor_ns: int = 0  # time spent in the monitor
    segments: int = 1  # engine requests the rollout took (2: it ran lean and was continued after its marker)
    monitored: bool = True
    probe_features: list[float] | None = None  # ARRoL: what the probe read at its detection length
    probe_score: float | None = None  # ARRoL: the quality head's success probability there

    @classmethod
    def from_record(cls, record: MonitorRecord, **server_fields: Any) -> RolloutReport:
        return cls(
            outcome=record.outcome,
            length=record.length,
            marker_at=record.marker_at,
            ended_at=record.ended_at,
            length_explored=record.length_explored,
            probe_features=record.probe_features,
            probe_score=record.probe_score,
            **server_fields,
        )

    @classmethod
    def unmonitored(cls, length: int = 0) -> RolloutReport:
        """A rollout that ran without a stop rule (DUET's stop disabled, or validation)."""
        return cls(outcome=Outcome.NATURAL_EOS, length=length, monitored=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["outcome"] = self.outcome.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutReport:
        _check_keys(cls, data)
        return cls(**{**data, "outcome": Outcome(data["outcome"])})
