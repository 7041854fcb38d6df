"""The budget policies selectable by ``duet.policy``, in one registry: DUET and the paper's budget-aware baselines.

Every policy implements :class:`~duet_verl.core.policies.base.BudgetPolicy` and runs inside the same
:class:`~duet_verl.core.controller.DuetController`, so all of them share the token accounting, the ``duet/*`` metrics,
the checkpointed state and the config checks.

========== =================================================================================================
``duet``    DUET (default): surrogate → Neyman allocation, stop/abort monitor, importance weights
``uniform`` GRPO at the budget: ``round(b·G)`` rollouts per prompt, no monitor
``greso``   GRESO (arXiv 2506.02177): probabilistic pre-rollout skip of recently zero-variance prompts
``vip``     VIP (arXiv 2602.01601): Gaussian-process success probabilities → ``min Σ p(1−p)/n`` under the budget
``arrol``   ARRoL (arXiv 2603.24840): a quality head prunes rollouts during generation toward balanced groups
========== =================================================================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from duet_verl.core.policies.arrol import ArrolPolicy
from duet_verl.core.policies.base import AllocationRequest, BudgetPolicy, PolicyAllocation, RolloutFeedback
from duet_verl.core.policies.duet import DuetPolicy, UniformPolicy, grpo_count
from duet_verl.core.policies.greso import GresoPolicy
from duet_verl.core.policies.vip import VipPolicy

if TYPE_CHECKING:
    from duet_verl.core.settings import DuetSettings

__all__ = [
    "POLICIES",
    "AllocationRequest",
    "BudgetPolicy",
    "PolicyAllocation",
    "RolloutFeedback",
    "build_policy",
    "check_policy_name",
    "grpo_count",
]

POLICIES: dict[str, type[BudgetPolicy]] = {
    cls.name: cls for cls in (DuetPolicy, UniformPolicy, GresoPolicy, VipPolicy, ArrolPolicy)
}


def check_policy_name(policy: str) -> None:
    """Raise ``ValueError`` (message starting with ``policy``) unless ``policy`` names a registered policy."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, got {policy!r}")


def build_policy(settings: DuetSettings, group_size: int) -> BudgetPolicy:
    """The policy ``settings.policy`` names, configured from its section of the settings."""
    check_policy_name(settings.policy)
    if settings.policy == GresoPolicy.name:
        return GresoPolicy(**settings.greso.kwargs(), seed=settings.seed, max_rollouts=group_size)
    if settings.policy == VipPolicy.name:
        return VipPolicy(**settings.vip.kwargs(), **settings.vip.bounds(group_size, settings.budget, settings.n_min))
    if settings.policy == ArrolPolicy.name:
        return ArrolPolicy(**settings.arrol.kwargs(), max_rollouts=settings.n_max)
    return POLICIES[settings.policy](settings)
