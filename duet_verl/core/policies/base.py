"""The interface every budget policy implements (DUET and the baselines), and the messages it exchanges.

A policy decides how a step's token budget is spent, at the three points the trainer already calls:

* **before rollout** — :meth:`BudgetPolicy.allocate`: rollouts per prompt and their propensities, from the shared
  :class:`AllocationRequest` (prompt ids, the surrogate's scores and expected lengths ``L̂``, the token budget
  ``B = b·M·G·mean(L̂)``, cold-start features);
* **during rollout** — :attr:`BudgetPolicy.monitors`: whether the monitor runs in the rollout server, with DUET's
  stop/abort (:attr:`BudgetPolicy.stop_abort`) and/or the policy's per-prompt pruning probes
  (:attr:`PolicyAllocation.probes`);
* **after rollout** — :meth:`BudgetPolicy.observe`: what the policy learns from each prompt's rewards (the
  importance weights follow from the propensities it returned), and :meth:`BudgetPolicy.observe_rollouts`: what it
  learns from single rollouts (the probes' features and the rewards that followed).

The :class:`~duet_verl.core.controller.DuetController` does everything else once for every policy (token accounting,
stop rules, advantage, surrogate and gates, ``duet/*`` metrics, checkpoint), so the policies share it without a copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from duet_verl.core.allocator import Allocation
from duet_verl.core.probe import ProbeRule

__all__ = ["AllocationRequest", "BudgetPolicy", "PolicyAllocation", "RolloutFeedback"]


@dataclass(frozen=True)
class AllocationRequest:
    """What every policy gets before rollout (one step's batch)."""

    prompt_ids: list[str]
    step: int
    scores: np.ndarray  # the DUET surrogate's informativeness ŝ per prompt
    lengths: np.ndarray  # expected tokens per rollout L̂ per prompt (the shared token accounting)
    budget: float  # token budget B of the step
    group_size: int  # verl's rollout.n (G)
    features: np.ndarray | None = None  # cold-start features (M, F), NaN where unknown


@dataclass(frozen=True)
class PolicyAllocation:
    """A policy's answer before rollout."""

    allocation: Allocation
    reprobed: np.ndarray | None = None  # DUET: prompts the measurement floor lifted by the re-probe draw
    floor_dropped: bool = False  # DUET: the budget could not pay the measurement floor
    metrics: dict[str, float] = field(default_factory=dict)  # the policy's own duet/* metrics of the plan
    probes: list[ProbeRule | None] | None = None  # per prompt: a pruning probe for the monitor (ARRoL)


@dataclass(frozen=True)
class RolloutFeedback:
    """One step's single rollouts (padding removed), for a policy that probes them during generation."""

    prompt_ids: list[str]
    rewards: np.ndarray  # (N,) each rollout's reward, NaN where it was pruned (never scored)
    pruned: np.ndarray  # (N,) bool: a probe pruned it
    probe_scores: np.ndarray  # (N,) the quality head's success probability at the probe, NaN where none ran
    probe_features: np.ndarray  # (N, F) what the probe read, NaN rows where none ran
    tokens_generated: float  # the step's generated tokens
    tokens_planned: float  # what the plan expected them to be


class BudgetPolicy:
    """Base of every ``duet.policy``: stateless unless a subclass keeps state (then it overrides the state methods)."""

    name: ClassVar[str]
    monitors: ClassVar[bool] = False  # run the monitor during rollout (with duet.stop.enable)
    stop_abort: ClassVar[bool] = True  # the monitor applies DUET's stop/abort rule (else only the policy's probes)

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        """Rollouts per prompt (``allocation.spent <= request.budget`` unless documented otherwise)."""
        raise NotImplementedError

    def observe(self, prompt_ids: Sequence[str], rewards: Sequence[Sequence[float]], step: int) -> dict[str, float]:
        """Learn from each observed prompt's rewards (aborted rollouts count as failures); returns metrics."""
        return {}

    def observe_rollouts(self, feedback: RolloutFeedback, step: int) -> dict[str, float]:
        """Learn from the step's single rollouts (ARRoL's quality head); returns metrics. The controller builds the
        feedback only for a policy that overrides this (:attr:`reads_rollouts`)."""
        return {}

    @property
    def reads_rollouts(self) -> bool:
        """Whether this policy overrides :meth:`observe_rollouts`."""
        return type(self).observe_rollouts is not BudgetPolicy.observe_rollouts

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain Python)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
