"""DUET's advantage estimator, registered in verl's estimator registry as ``duet_grpo``.

Through verl's generic advantage path (which passes only rewards, mask, group index and
``config.algorithm``) it is GRPO with DUET's rule for groups of one rollout. The DUET trainer calls the
same function with the per-rollout fields (propensities, outcomes, padding) that verl's path cannot pass.
"""

from __future__ import annotations

from typing import Any

import torch

from duet_verl.core.advantage import WeightedAdvantage, duet_advantage
from duet_verl.core.settings import DuetSettings

__all__ = ["DUET_ESTIMATOR", "compute_duet_grpo_advantage", "duet_weighted_advantage"]

DUET_ESTIMATOR = "duet_grpo"


def duet_weighted_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any,
    settings: DuetSettings,
    norm_by_std: bool = True,
    **rollout_fields: torch.Tensor | None,
) -> WeightedAdvantage:
    """:func:`duet_verl.core.advantage.duet_advantage` with the knobs of a :class:`DuetSettings`."""
    return duet_advantage(
        token_level_rewards,
        response_mask,
        index,
        eps_abort=settings.stop.eps_abort,
        max_weight=settings.weights.max_weight,
        self_normalize=settings.weights.self_normalize,
        singleton=settings.weights.singleton,
        aborted_baseline=settings.weights.aborted_baseline,
        failure_score=settings.weights.failure_score,
        norm_by_std=norm_by_std,
        **rollout_fields,
    )


def compute_duet_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator signature: returns ``(advantages, returns)``, both (B, T)."""
    if index is None:
        raise ValueError("duet_grpo needs the group index (verl's 'uid' field)")
    norm = bool(config.get("norm_adv_by_std_in_grpo", True)) if config is not None else True
    settings = (
        DuetSettings.from_mapping(_plain(config.get("duet")))
        if config is not None and config.get("duet")
        else DuetSettings()
    )
    fields = {k: kwargs.get(k) for k in ("p_pre", "eps_kept", "aborted", "padding")}
    out = duet_weighted_advantage(token_level_rewards, response_mask, index, settings, norm, **fields)
    return out.advantages, out.returns


def _plain(value: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except ImportError:  # pragma: no cover - omegaconf ships with hydra, a dependency
        return value
