"""DUET's advantage estimator in verl's registry: ``duet_grpo``.

verl's generic advantage path passes only rewards, mask, group index and ``config.algorithm``; through it
``duet_grpo`` is GRPO on the unmasked sequence score with DUET's default rule for groups of one rollout (the
``duet:`` section is not visible there). :class:`~duet_verl.adapters.trainer.DuetPPOTrainerSync` does not use this
path: its ``_compute_advantage`` hook calls :meth:`~duet_verl.core.controller.DuetController.advantage` with the
per-rollout fields (propensities, outcomes, padding) and the configured ``duet.weights``.
"""

from __future__ import annotations

from typing import Any

import torch

from duet_verl.core.advantage import duet_advantage

__all__ = ["DUET_ESTIMATOR", "compute_duet_grpo_advantage"]

DUET_ESTIMATOR = "duet_grpo"


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
    out = duet_advantage(token_level_rewards, response_mask, index, norm_by_std=norm)
    return out.advantages, out.returns
