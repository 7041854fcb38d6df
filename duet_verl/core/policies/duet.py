"""DUET's allocation (SPEC §2, issue 11): cost-weighted Neyman allocation of the surrogate's scores under the token
budget, with the measurement floor and its re-probe weights; ``duet.allocate=false`` gives every prompt GRPO's
``round(b·G)`` rollouts instead (the stop/abort rule alone). DUET also runs the stop/abort monitor."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from duet_verl.core.allocator import allocate_rollouts, free_counts, measurement_floor, uniform_allocation
from duet_verl.core.policies.base import AllocationRequest, BudgetPolicy, PolicyAllocation

if TYPE_CHECKING:
    from duet_verl.core.settings import DuetSettings

__all__ = ["DuetPolicy", "UniformPolicy", "grpo_count"]


def grpo_count(budget_fraction: float, group_size: int) -> int:
    """Rollouts per prompt of GRPO at budget ``b``: ``round(b·G)``, at least one."""
    return max(1, round(budget_fraction * group_size))


class DuetPolicy(BudgetPolicy):
    """DUET: allocation from the surrogate's scores, stop/abort during rollout, importance weights after."""

    name = "duet"
    monitors = True

    def __init__(self, settings: DuetSettings):
        self.settings = settings

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        s, ids, lengths = self.settings, request.prompt_ids, request.lengths
        if not s.allocate:  # stop/abort only: GRPO's round(b * G) rollouts for every prompt, no floor
            count = grpo_count(s.budget, request.group_size)
            return PolicyAllocation(uniform_allocation(lengths, request.budget, count, s.n_min, s.n_max))
        floor = min(s.explore.floor, s.n_max)
        lower, drawn = measurement_floor(ids, int(request.step), s.seed, s.n_min, floor, s.explore.reprobe)
        floor_dropped = float(lower @ lengths) > request.budget
        if floor_dropped:  # the budget cannot give every drawn prompt the floor (b * G below it): n_min
            lower = None
        alloc = allocate_rollouts(
            request.scores,
            lengths,
            request.budget,
            s.n_min,
            s.n_max,
            s.eps_pre,
            s.cap_propensity,
            lower=lower,
            length_cost=s.length_cost,
        )
        reprobed = None
        if lower is not None and s.explore.reprobe < 1.0:
            free = free_counts(request.scores, lengths, alloc.lam, s.n_min, s.n_max, s.length_cost)
            reprobed = drawn & (free < floor) & (alloc.n >= floor)
            p_pre = np.where(reprobed, alloc.p_pre * s.explore.reprobe, alloc.p_pre)
            alloc = replace(alloc, p_pre=np.clip(p_pre, s.eps_pre, 1.0 if s.cap_propensity else None))
        return PolicyAllocation(alloc, reprobed, floor_dropped)


class UniformPolicy(BudgetPolicy):
    """GRPO at the budget through the same accounting: ``round(b·G)`` rollouts per prompt, weight 1, no monitor."""

    name = "uniform"

    def __init__(self, settings: DuetSettings):
        self.settings = settings

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        s = self.settings
        count = grpo_count(s.budget, request.group_size)
        return PolicyAllocation(uniform_allocation(request.lengths, request.budget, count, s.n_min, s.n_max))
