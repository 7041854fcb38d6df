"""Cost-weighted Neyman allocation of rollouts per prompt under a shared token budget (SPEC §2).

Minimise ``sum_q s_q**2 / (n_q * L_q)`` subject to ``sum_q n_q * L_q <= B`` with integer
``n_q`` in ``[n_min, n_max]``. The stationarity condition gives ``n_q(lam) = s_q / sqrt(lam * L_q)``;
after rounding and clipping, the spend ``Phi(lam) = sum_q n_q(lam) * L_q`` is a non-increasing step
function of ``lam``. We search the *discrete* spend directly, in the scale ``c = 1 / sqrt(lam)``,
for the largest ``c`` whose spend fits the budget (bisection on ``log c`` down to float precision),
so the result is within budget by construction. Prompts that tie at the next breakpoint are then
topped up greedily, best marginal variance reduction per token first, while the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "allocate_rollouts", "check_allocation_options", "token_budget"]

_MAX_BISECTION_STEPS = 200


@dataclass(frozen=True)
class Allocation:
    """Result of one allocation.

    Attributes:
        n: rollouts per prompt, int64 array of shape (M,).
        p_pre: pre-rollout propensity ``clip(n / mean(n), eps_pre, 1)`` (no upper cap if ``cap_propensity=False``).
        lam: the multiplier ``lambda*`` of the budget constraint, ``1 / c*^2``.
        budget: the token budget ``B``.
        spent: ``sum(n * L)``, always ``<= budget``.
        budget_error: ``(budget - spent) / budget``, the unused fraction.
        frac_at_min: fraction of prompts with ``n == n_min``.
        frac_at_max: fraction of prompts with ``n == n_max``.
        bisection_steps: number of spend evaluations used by the search.
    """

    n: np.ndarray
    p_pre: np.ndarray
    lam: float
    budget: float
    spent: float
    budget_error: float
    frac_at_min: float
    frac_at_max: float
    bisection_steps: int


def token_budget(expected_lengths: np.ndarray, group_size: int, budget_fraction: float) -> float:
    """``B = b * M * G * mean(L)``: the fraction ``b`` of what uniform GRPO with ``G`` rollouts would spend."""
    _check_positive_int("group_size", group_size)
    check_allocation_options(budget_fraction=budget_fraction)
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    return float(budget_fraction * group_size * lengths.sum())


def allocate_rollouts(
    scores: np.ndarray,
    expected_lengths: np.ndarray,
    budget: float,
    n_min: int = 1,
    n_max: int = 32,
    eps_pre: float = 0.05,
    cap_propensity: bool = True,
) -> Allocation:
    """Allocate integer rollout counts under a token budget.

    Args:
        scores: surrogate ``s_q >= 0`` per prompt, shape (M,). A zero score gets ``n_min``; if all scores
            (after dividing by ``sqrt(L)``) are equal, every prompt is treated alike.
        expected_lengths: expected tokens per rollout ``L_q > 0``, shape (M,).
        budget: token budget ``B``. Must be at least ``n_min * sum(L)`` (every prompt gets ``n_min``);
            a smaller budget is a configuration error (``budget_fraction * G < n_min``) and raises.
        n_min, n_max: bounds on ``n_q``.
        eps_pre: floor of the pre-rollout propensity.
        cap_propensity: cap ``p_pre`` at 1 (the paper's rule): prompts allocated more than the mean
            rollouts keep weight 1, so they count more than under uniform GRPO. With ``False`` the weight
            ``mean(n) / n`` also shrinks them and the weighted gradient is unbiased for the uniform-prompt
            objective (see ``tests/core/test_advantage_on_cpu.py``).

    Returns:
        An :class:`Allocation` with ``spent <= budget``.

    Raises:
        ValueError: on bad shapes, non-finite or negative inputs, or an infeasible budget.
    """
    s, lengths = _validate(scores, expected_lengths, budget, n_min, n_max, eps_pre)
    rate = s / np.sqrt(lengths)  # n_q(c) = round(c * rate_q), clipped
    if np.all(rate == rate[0]):
        rate = np.ones_like(rate)  # no information to tell prompts apart: uniform
    floor_spend = float(np.full(s.shape, float(n_min)) @ lengths)  # same arithmetic as the spend below
    if floor_spend > budget:
        raise ValueError(
            f"budget={budget:.6g} tokens is below the floor n_min * sum(L) = {floor_spend:.6g}; "
            "raise the budget fraction or lower n_min"
        )

    def counts(c: float) -> np.ndarray:
        return np.minimum(np.maximum(np.rint(c * rate), n_min), n_max)

    # Bracket: at c_lo every prompt rounds to <= n_min, at c_hi every positive-rate prompt is at n_max.
    positive = rate[rate > 0]
    c_lo, c_hi = (n_min - 0.5) / positive.max(), (n_max + 0.5) / positive.min()
    steps = 0
    if float(counts(c_hi) @ lengths) <= budget:
        c_lo = c_hi
    else:
        c_lo, c_hi, steps = _bisect_spend(counts, lengths, budget, c_lo, c_hi)
    n = counts(c_lo)
    if c_hi > c_lo:
        n = _top_up_ties(n, counts(c_hi), s, lengths, budget)
    spent = float(n @ lengths)
    n_int = n.astype(np.int64)
    p_pre = np.clip(n / n.mean(), eps_pre, 1.0 if cap_propensity else None)
    lam = 1.0 / (c_lo * c_lo)
    return Allocation(
        n=n_int,
        p_pre=p_pre,
        lam=lam,
        budget=float(budget),
        spent=spent,
        budget_error=(float(budget) - spent) / float(budget),
        frac_at_min=float(np.mean(n_int == n_min)),
        frac_at_max=float(np.mean(n_int == n_max)),
        bisection_steps=steps,
    )


def _bisect_spend(counts, lengths: np.ndarray, budget: float, c_lo: float, c_hi: float) -> tuple[float, float, int]:
    """Shrink ``[c_lo, c_hi]`` keeping ``spend(c_lo) <= budget < spend(c_hi)`` until it is one float wide."""
    steps = 0
    while steps < _MAX_BISECTION_STEPS:
        mid = np.sqrt(c_lo * c_hi)
        if not (c_lo < mid < c_hi):
            break
        steps += 1
        if float(counts(mid) @ lengths) <= budget:
            c_lo = mid
        else:
            c_hi = mid
    return c_lo, c_hi, steps


def _top_up_ties(n: np.ndarray, n_next: np.ndarray, s: np.ndarray, lengths: np.ndarray, budget: float) -> np.ndarray:
    """Give one more rollout to prompts that jump together at the next breakpoint, while the budget allows.

    Order: largest variance reduction per token ``s^2 / (L^2 n (n+1))`` first, ties by prompt index.
    """
    candidates = np.flatnonzero(n_next > n)
    if candidates.size == 0:
        return n
    left = budget - float(n @ lengths)
    gain = s[candidates] ** 2 / (lengths[candidates] ** 2 * n[candidates] * (n[candidates] + 1))
    order = candidates[np.lexsort((candidates, -gain))]
    fits = np.cumsum(lengths[order]) <= left
    chosen = order[: int(np.argmin(fits)) if not fits.all() else order.size]
    n = n.copy()
    n[chosen] += 1
    return n


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _validate(scores, expected_lengths, budget, n_min, n_max, eps_pre) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if lengths.shape != s.shape:
        raise ValueError(f"expected_lengths must have the shape of scores {s.shape}, got {lengths.shape}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError("scores must be finite and >= 0 (found NaN, inf or a negative value)")
    if not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
        raise ValueError("expected_lengths must be finite and > 0 (found NaN, inf or a non-positive value)")
    if not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a finite positive number of tokens, got {budget!r}")
    check_allocation_options(n_min=n_min, n_max=n_max, eps_pre=eps_pre)
    return s, lengths


def check_allocation_options(
    *,
    budget_fraction: float | None = None,
    n_min: int = 1,
    n_max: int = 1,
    eps_pre: float = 1.0,
    group_size: int | None = None,
) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless the given allocation options are
    valid; with ``budget_fraction`` and ``group_size``, also that the budget leaves ``n_min`` rollouts per prompt
    (``b * G >= n_min``)."""
    if budget_fraction is not None and not (isinstance(budget_fraction, int | float) and 0.0 < budget_fraction <= 1.0):
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction!r}")
    _check_positive_int("n_min", n_min)
    _check_positive_int("n_max", n_max)
    if n_min > n_max:
        raise ValueError(f"n_min ({n_min}) must not exceed n_max ({n_max})")
    if not (isinstance(eps_pre, int | float) and 0.0 < eps_pre <= 1.0):
        raise ValueError(f"eps_pre must be in (0, 1], got {eps_pre!r}")
    if budget_fraction is not None and group_size is not None and budget_fraction * group_size < n_min:
        raise ValueError(
            f"budget_fraction times rollout.n ({group_size}) must be >= n_min ({n_min}) (n_min rollouts per prompt), "
            f"got {budget_fraction!r}"
        )
