"""GRPO group advantage with DUET's importance weights and abort masking (SPEC §4). Torch in, torch out.

Rows are rollouts, shaped like verl's estimators: ``token_level_rewards`` and ``response_mask`` are
(B, T) and ``index`` holds each rollout's prompt/group id. Per rollout:

* The **score** is ``token_level_rewards`` summed over the row *without* the mask, exactly as verl's GRPO
  sums it. verl writes the outcome reward on the last response position, which for a rollout DUET stopped
  is the appended end-of-turn token whose mask is 0; a masked sum would score every stopped rollout 0.
* **valid** rows (neither aborted nor padding) carry the loss. Padding rows never enter a group.
  Aborted rows enter their group's mean/std as failures (score ``failure_score``, default 0, as the DUET
  reference does) with ``aborted_baseline="failure"`` (default), or are left out of it with ``"exclude"``;
  either way they get advantage 0 and leave the loss. Group std uses Bessel's correction, as verl's GRPO.
* A group with a single member has no within-group baseline. ``singleton="zero"`` (default) gives it
  advantage 0; ``singleton="raw"`` keeps its raw score, as stock verl GRPO does.
* Weight ``w = 1 / p_pre``, times ``1 / eps_abort`` for ε-kept rollouts, clamped to ``max_weight``;
  optionally self-normalised to mean 1 over the rows that carry gradient (valid, advantage != 0).
* Advantages and returns are ``w * A`` broadcast over the row's mask; aborted and padding rows get
  advantage 0 and mask 0 (the caller must zero every mask the loss reads: verl's ``response_mask`` *and*
  ``loss_mask``).
* ``row_share_cap`` (default 1, off) bounds any single gradient-carrying row's share of ``Σ|w·A|·len``: the
  weights of the rows above it are lowered (water-filling) until each holds at most that share — a bias traded
  for a bounded influence of one ε-kept row; ``duet/capped_rows`` counts them.
* Weight diagnostics (ESS, largest weight, the largest single row's share of ``Σ|w·A|·len``) are taken
  over the gradient-carrying rows only: rows with advantage 0 have no influence whatever their weight.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from duet_verl.core.monitor import StopRuleConfig

__all__ = [
    "WeightedAdvantage",
    "check_weight_options",
    "duet_advantage",
    "effective_sample_size",
    "group_ids_to_int",
    "grpo_group_advantage",
    "importance_weights",
    "normalize_weights",
    "row_share_cap_weights",
    "weight_diagnostics",
]

SINGLETON_RULES = ("zero", "raw")
ABORTED_BASELINE_RULES = ("failure", "exclude")


def group_ids_to_int(index: Sequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Dense integer group ids (0..K-1) for arbitrary hashable ids (strings, ints)."""
    if isinstance(index, torch.Tensor):
        return torch.unique(index, return_inverse=True)[1]
    arr = np.asarray(index, dtype=object).ravel()
    _, inverse = np.unique(arr.astype(str), return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long)


def grpo_group_advantage(
    scores: torch.Tensor,
    index: Sequence | np.ndarray | torch.Tensor,
    valid: torch.Tensor | None = None,
    eps: float = 1e-6,
    norm_by_std: bool = True,
    singleton: str = "zero",
) -> torch.Tensor:
    """Scalar GRPO advantage per rollout: ``(r - mean_group) / (std_group + eps)`` over valid rows.

    Invalid rows get 0. ``singleton`` decides what a group with one valid rollout gets (see module doc).
    """
    check_weight_options(singleton=singleton)
    scores = scores.to(torch.float64)
    size = scores.shape[0]
    groups = group_ids_to_int(index).to(scores.device)
    if groups.shape[0] != size:
        raise ValueError(f"index has {groups.shape[0]} entries for {size} rollouts")
    valid = torch.ones(size, dtype=torch.bool, device=scores.device) if valid is None else valid.to(torch.bool)
    num_groups = int(groups.max().item()) + 1 if size else 0
    v = valid.to(torch.float64)
    count = torch.zeros(num_groups, dtype=torch.float64, device=scores.device).index_add_(0, groups, v)
    total = torch.zeros_like(count).index_add_(0, groups, scores * v)
    mean = total / count.clamp(min=1)
    sq = torch.zeros_like(count).index_add_(0, groups, (scores - mean[groups]) ** 2 * v)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    adv = scores - mean[groups]
    if norm_by_std:
        adv = adv / (std[groups] + eps)
    single = count[groups] == 1
    adv = torch.where(single, scores if singleton == "raw" else torch.zeros_like(scores), adv)
    return torch.where(valid, adv, torch.zeros_like(adv))


def importance_weights(
    p_pre: torch.Tensor,
    eps_kept: torch.Tensor,
    eps_abort: float,
    max_weight: float,
    self_normalize: bool = False,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``w = clamp(1 / p_pre * (1 / eps_abort if eps_kept else 1), max=max_weight)``; 0 on invalid rows."""
    if not (0.0 < eps_abort <= 1.0):
        raise ValueError(f"eps_abort must be in (0, 1], got {eps_abort!r}")
    check_weight_options(max_weight=max_weight)
    p_pre = p_pre.to(torch.float64)
    if torch.any(~torch.isfinite(p_pre)) or torch.any(p_pre <= 0):
        raise ValueError("p_pre must be finite and > 0")
    w = (1.0 / p_pre) * torch.where(eps_kept.to(torch.bool), 1.0 / eps_abort, 1.0)
    w = w.clamp(max=max_weight)
    if valid is not None:
        w = torch.where(valid.to(torch.bool), w, torch.zeros_like(w))
    return normalize_weights(w, valid) if self_normalize else w


def check_weight_options(
    *,
    max_weight: float = 1.0,
    singleton: str = SINGLETON_RULES[0],
    aborted_baseline: str = ABORTED_BASELINE_RULES[0],
    failure_score: float = 0.0,
    row_share_cap: float = 1.0,
) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless the given options are valid."""
    if not (isinstance(row_share_cap, int | float) and not isinstance(row_share_cap, bool) and 0 < row_share_cap <= 1):
        raise ValueError(f"row_share_cap must be in (0, 1], got {row_share_cap!r}")
    if not (isinstance(max_weight, int | float) and math.isfinite(max_weight) and max_weight >= 1.0):
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight!r}")
    if singleton not in SINGLETON_RULES:
        raise ValueError(f"singleton must be one of {SINGLETON_RULES}, got {singleton!r}")
    if aborted_baseline not in ABORTED_BASELINE_RULES:
        raise ValueError(f"aborted_baseline must be one of {ABORTED_BASELINE_RULES}, got {aborted_baseline!r}")
    if not (isinstance(failure_score, int | float) and math.isfinite(failure_score)):
        raise ValueError(f"failure_score must be a finite number, got {failure_score!r}")


def normalize_weights(weights: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Self-normalise (SNIPS) so the weights of ``rows`` (default: all) average 1; the same factor scales
    every row. Weights whose selected sum is 0 are returned unchanged."""
    selected = weights if rows is None else weights[rows.to(torch.bool)]
    total = selected.sum()
    return weights * (selected.numel() / total) if total > 0 else weights


def effective_sample_size(weights: torch.Tensor) -> float:
    """Kish's ESS ``(sum w)^2 / sum w^2`` (0 for all-zero weights)."""
    w = weights.to(torch.float64)
    denom = float((w * w).sum())
    return 0.0 if denom == 0 else float(w.sum()) ** 2 / denom


@dataclass(frozen=True)
class WeightedAdvantage:
    """Output of :func:`duet_advantage`."""

    advantages: torch.Tensor  # (B, T), weighted and masked
    returns: torch.Tensor  # (B, T), same as advantages (outcome supervision)
    response_mask: torch.Tensor  # (B, T), zero on aborted/padding rows
    scores: torch.Tensor  # (B,), each rollout's sequence score (rewards summed without the mask, as verl)
    scalar_advantages: torch.Tensor  # (B,), w * A per rollout
    weights: torch.Tensor  # (B,), 0 on invalid rows
    metrics: dict[str, float]

    @property
    def unweighted_advantages(self) -> torch.Tensor:
        """(B,) the GRPO advantage before the importance weight (0 on invalid rows)."""
        w = self.weights.to(torch.float64)
        return torch.where(w > 0, self.scalar_advantages / torch.where(w > 0, w, 1.0), torch.zeros_like(w))


def duet_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Sequence | np.ndarray | torch.Tensor,
    p_pre: torch.Tensor | None = None,
    eps_kept: torch.Tensor | None = None,
    aborted: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
    eps_abort: float = StopRuleConfig.eps_abort,
    max_weight: float = 1000.0,
    self_normalize: bool = False,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    singleton: str = "zero",
    aborted_baseline: str = "failure",
    failure_score: float = 0.0,
    row_share_cap: float = 1.0,
) -> WeightedAdvantage:
    """DUET's weighted, abort-masked GRPO advantage. Missing per-rollout fields default to the GRPO case.

    The defaults of the options are DUET's (``duet.weights.*`` reads them from this signature)."""
    if token_level_rewards.shape != response_mask.shape or token_level_rewards.dim() != 2:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must be the same (B, T) shape"
        )
    check_weight_options(
        max_weight=max_weight,
        singleton=singleton,
        aborted_baseline=aborted_baseline,
        failure_score=failure_score,
        row_share_cap=row_share_cap,
    )
    size, device = token_level_rewards.shape[0], token_level_rewards.device

    def flag(x: torch.Tensor | None) -> torch.Tensor:
        return torch.zeros(size, dtype=torch.bool, device=device) if x is None else x.to(device, torch.bool).view(-1)

    aborted_, padding_, kept_ = flag(aborted), flag(padding), flag(eps_kept)
    aborted_ = aborted_ & ~padding_
    valid = ~(aborted_ | padding_)
    p = torch.ones(size, dtype=torch.float64, device=device) if p_pre is None else p_pre.to(device).view(-1)
    scores = token_level_rewards.to(torch.float64).sum(dim=-1)
    if aborted_baseline == "failure":
        members = valid | aborted_
        baseline_scores = torch.where(aborted_, torch.full_like(scores, float(failure_score)), scores)
    else:
        members, baseline_scores = valid, scores
    adv = grpo_group_advantage(baseline_scores, index, members, eps=eps, norm_by_std=norm_by_std, singleton=singleton)
    adv = torch.where(valid, adv, torch.zeros_like(adv))
    w = importance_weights(p, kept_, eps_abort, max_weight, valid=valid)
    carrying = valid & (adv != 0)
    clamped = float((w[carrying] >= max_weight).to(torch.float64).mean()) if bool(carrying.any()) else 0.0
    if self_normalize:
        w = normalize_weights(w, carrying)
    lengths = response_mask.to(torch.float64).sum(-1)
    capped = 0
    if row_share_cap < 1.0:
        w, capped = row_share_cap_weights(w, adv, lengths, carrying, row_share_cap)
    scalar = w * adv
    new_mask = response_mask * valid.unsqueeze(-1).to(response_mask.dtype)
    token_adv = (scalar.unsqueeze(-1) * new_mask.to(torch.float64)).to(token_level_rewards.dtype)
    metrics = weight_diagnostics(w, scalar, lengths, carrying)
    metrics["clamped_fraction"] = clamped
    metrics["capped_rows"] = float(capped)
    metrics["valid_fraction"] = float(valid.sum()) / size if size else 0.0
    return WeightedAdvantage(token_adv, token_adv.clone(), new_mask, scores, scalar, w, metrics)


def row_share_cap_weights(
    weights: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor, carrying: torch.Tensor, cap: float
) -> tuple[torch.Tensor, int]:
    """Lower the weights of the gradient-carrying rows whose ``|w·A|·len`` exceeds ``cap`` of the total so that each
    holds exactly ``cap`` of the new total (the others unchanged). With fewer than ``1 / cap`` rows every row ends
    with an equal share. Returns the new weights and how many rows were lowered."""
    w = weights.to(torch.float64).clone()
    idx = torch.nonzero(carrying, as_tuple=False).view(-1)
    if idx.numel() == 0:
        return w, 0
    mass = (w[idx] * adv[idx].to(torch.float64)).abs() * lengths[idx].to(torch.float64)
    order = torch.argsort(mass, descending=True)
    sorted_mass = mass[order]
    cap = max(cap, 1.0 / idx.numel())
    rest = float(sorted_mass.sum())
    for k in range(idx.numel()):
        # with the k largest capped, the total T solves T = rest_k + k * cap * T
        total = rest / (1.0 - k * cap) if k * cap < 1.0 else float("inf")
        if float(sorted_mass[k]) <= cap * total * (1 + 1e-12):
            break
        rest -= float(sorted_mass[k])
    else:  # every row at the cap: equal shares
        k, total, cap = idx.numel(), float(sorted_mass.sum()), 1.0 / idx.numel()
    if k == 0:
        return w, 0
    top = idx[order[:k]]
    w[top] = w[top] * (cap * total / mass[order[:k]])
    return w.to(weights.dtype), k


def weight_diagnostics(
    weights: torch.Tensor, scalar: torch.Tensor, lengths: torch.Tensor, carrying: torch.Tensor
) -> dict[str, float]:
    """ESS, weight extremes and ``max_row_share`` (largest ``|w·A|·len`` over its sum) over the rows that
    carry gradient; all 0 when no row does."""
    w = weights[carrying].to(torch.float64)
    count = int(w.numel())
    if count == 0:
        keys = ("ess", "ess_fraction", "max_weight", "mean_weight", "max_row_share")
        return {**dict.fromkeys(keys, 0.0), "gradient_rows": 0.0}
    mass = (scalar[carrying].abs() * lengths[carrying]).to(torch.float64)
    ess = effective_sample_size(w)
    return {
        "ess": ess,
        "ess_fraction": ess / count,
        "max_weight": float(w.max()),
        "mean_weight": float(w.mean()),
        "max_row_share": float(mass.max() / mass.sum()) if float(mass.sum()) > 0 else 0.0,
        "gradient_rows": float(count),
    }
