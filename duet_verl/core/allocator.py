"""Cost-weighted Neyman allocation of rollouts per prompt under a shared token budget (SPEC §2).

Minimise ``J(n) = sum_q a_q / n_q`` subject to ``sum_q n_q * L_q <= B`` with integer ``n_q`` in ``[n_min, n_max]``,
a separable convex integer problem, where ``a_q`` depends on ``length_cost``:

* ``"sqrt"`` (default, the paper's rule and the DUET reference's): ``a_q = s_q**2``, i.e. the variance
  ``sum_q s_q**2 / n_q`` of the batch's summed per-prompt gradient estimates (``s_q`` is a per-rollout std) at a
  token cost ``L_q`` per rollout; the stationarity is SPEC §2's ``n_q = s_q / sqrt(lam L_q)``.
* ``"linear"``: ``a_q = s_q**2 / L_q``, SPEC §2's objective as literally written (``sum s_q**2 / (n_q L_q)``), whose
  stationarity is ``n_q = s_q / (L_q sqrt(lam))``: long prompts get fewer rollouts than under the paper's rule.
  (SPEC §2 states this objective but the ``sqrt`` stationarity; the two disagree, and the paper's numbers come
  from the ``sqrt`` rule.)

One more rollout for prompt ``q`` (``n -> n + 1``) lowers ``J`` by ``a_q / (n (n + 1))`` at a cost of ``L_q``
tokens, a gain per token of ``r_q**2 / (n (n + 1))`` with ``r_q**2 = a_q / L_q`` (``r_q = s_q / sqrt(L_q)`` or
``s_q / L_q``), decreasing in ``n``. Greedy by marginal gain per token is then the solution, computed in vectorised
stages:

1. **Threshold (λ) search.** For a multiplier ``lam`` (a gain per token), every increment worth at least ``lam``
   is taken: ``n_q(lam)`` is the largest ``n`` with ``n (n - 1) <= r_q**2 / lam``, clipped. Its continuous
   version is the stationarity ``n_q = r_q / sqrt(lam)`` of ``J``. The spend ``sum n_q(lam) L_q`` is a
   non-increasing step function; bisection on ``log lam`` finds the smallest ``lam`` whose spend fits ``B``.
2. **Marginal-gain finish.** The budget left over is filled with the remaining increments in decreasing
   gain-per-token order, skipping those that no longer fit (first fit), until none fits.
3. **Exchange.** A short local search moves single rollouts from the cheapest decrements to the best
   increments while that lowers ``J`` within budget (the knapsack residue of unequal costs ``L_q``).

Stage 1 alone is the exact optimum at the budget it spends; stages 2–3 spend what the last breakpoint left,
so the result is always within budget and in practice at the integer optimum. ``tests/core/test_allocator_on_cpu.py``
checks on random batches of 64–512 prompts that the objective is never worse than the reference rule's (rounded
λ path + trim, SPEC §2), under either objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from duet_verl.core.checks import require_positive_ints, require_probabilities
from duet_verl.core.rng import RolloutRandom, rollout_seed

__all__ = [
    "LENGTH_COSTS",
    "Allocation",
    "allocate_rollouts",
    "check_allocation_options",
    "check_measurement_options",
    "even_allocation",
    "free_counts",
    "measurement_floor",
    "token_budget",
    "uniform_allocation",
]

LENGTH_COSTS = ("sqrt", "linear")
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


# Relative slack of the token budget: a budget of exactly k rollouts per prompt (b * G = k) must admit k for every
# prompt although b * G * sum(L) and the spend sum(k * L) are summed in different orders (they differ by an ulp).
BUDGET_SLACK = 1e-9


def token_budget(expected_lengths: np.ndarray, group_size: int, budget_fraction: float) -> float:
    """``B = b * M * G * mean(L)``: the fraction ``b`` of what uniform GRPO with ``G`` rollouts would spend (plus a
    relative :data:`BUDGET_SLACK`, far below one token, so that float summation order never costs a rollout)."""
    require_positive_ints(group_size=group_size)
    check_allocation_options(budget_fraction=budget_fraction)
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    return float(budget_fraction * group_size * lengths.sum()) * (1.0 + BUDGET_SLACK)


def allocate_rollouts(
    scores: np.ndarray,
    expected_lengths: np.ndarray,
    budget: float,
    n_min: int = 1,
    n_max: int = 32,
    eps_pre: float = 0.05,
    cap_propensity: bool = True,
    lower: np.ndarray | None = None,
    length_cost: str = "sqrt",
) -> Allocation:
    """Allocate integer rollout counts under a token budget.

    Args:
        scores: surrogate ``s_q >= 0`` per prompt, shape (M,). A zero score gets ``n_min``; if all rates
            ``r_q`` are equal (all scores zero included), every prompt is treated alike (uniform ``n``).
        expected_lengths: expected tokens per rollout ``L_q > 0``, shape (M,).
        budget: token budget ``B``. Must be at least ``n_min * sum(L)`` (every prompt gets ``n_min``);
            a smaller budget is a configuration error (``budget_fraction * G < n_min``) and raises.
        n_min, n_max: bounds on ``n_q``.
        eps_pre: floor of the pre-rollout propensity.
        cap_propensity: cap ``p_pre`` at 1 (the paper's rule): prompts allocated more than the mean
            rollouts keep weight 1, so they count more than under uniform GRPO. With ``False`` the weight
            ``mean(n) / n`` also shrinks them and the weighted gradient is unbiased for the uniform-prompt
            objective (see ``tests/core/test_advantage_on_cpu.py``).
        lower: optional per-prompt lower bounds (integers in ``[n_min, n_max]``) in place of ``n_min``, e.g. a
            measurement floor (:func:`measurement_floor`). ``frac_at_min`` still counts ``n == n_min``.
        length_cost: ``"sqrt"`` (the paper's ``n ∝ s / sqrt(L)``) or ``"linear"`` (``n ∝ s / L``); see the module.

    Returns:
        An :class:`Allocation` with ``spent <= budget``.

    Raises:
        ValueError: on bad shapes, non-finite or negative inputs, or an infeasible budget.
    """
    s, lengths = _validate(scores, expected_lengths, budget, n_min, n_max, eps_pre)
    low = _lower_bounds(lower, s.shape, n_min, n_max)
    rate = _rates(s, lengths, length_cost)  # gain per token of n -> n + 1 is rate**2 / (n (n + 1))
    floor_spend = float(low @ lengths)  # same arithmetic as the spend below
    if floor_spend > budget:
        raise ValueError(
            f"budget={budget:.6g} tokens is below the floor n_min * sum(L) = {floor_spend:.6g}; "
            "raise the budget fraction or lower n_min (or the measurement floor)"
        )
    rate2 = rate * rate

    def counts(lam: float) -> np.ndarray:
        # largest n with n (n - 1) <= rate^2 / lam, i.e. every increment below n gains >= lam per token
        k = np.floor(0.5 + np.sqrt(0.25 + rate2 / lam))
        return np.minimum(np.maximum(k, low), n_max)

    # Bracket: at lam_hi no increment above n_min is worth it; at lam_lo every positive-rate prompt is at n_max.
    positive = rate2 > 0
    lam_hi = float(rate2[positive].max()) / (n_min * (n_min + 1)) * (1.0 + 1e-9)
    lam_lo = float(rate2[positive].min()) / (n_max * (n_max + 1)) * (1.0 - 1e-9)
    steps = 0
    if float(counts(lam_lo) @ lengths) <= budget:
        lam_hi = lam_lo
    else:
        lam_lo, lam_hi, steps = _bisect_spend(counts, lengths, budget, lam_lo, lam_hi, _guess(rate, lengths, budget))
    start = counts(lam_hi)

    def objective(k: np.ndarray) -> float:
        return float(rate2 * lengths @ (1.0 / k))

    # first fit by gain per token, then single exchanges
    n = _improve_by_exchange(
        _fill_by_marginal_gain(start, rate2, lengths, budget, n_max), rate2, lengths, budget, low, n_max
    )
    # the reference rule's own answer as a second candidate: in a knapsack corner that single exchanges cannot
    # leave (about 1 batch in 3,000) the result is then still never worse than the reference rule
    rounded = _rounded_path_start(s, lengths, budget, low, n_max)
    if float(rounded @ lengths) <= budget:
        n = min((n, rounded), key=objective)
    spent = float(n @ lengths)
    n_int = n.astype(np.int64)
    p_pre = np.clip(n / n.mean(), eps_pre, 1.0 if cap_propensity else None)
    lam = float(lam_hi)
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


def uniform_allocation(expected_lengths: np.ndarray, budget: float, count: int, n_min: int = 1, n_max: int = 32):
    """Every prompt gets ``count`` rollouts (clipped to ``[n_min, n_max]``) with propensity 1: DUET with its
    allocation switched off (``duet.allocate=false``), as GRPO at ``round(b * G)`` rollouts. ``spent`` can exceed
    ``budget`` by the rounding of ``b * G`` (then ``budget_error < 0``), exactly as for that GRPO."""
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    n = np.full(lengths.shape, min(max(int(count), n_min), n_max), dtype=np.int64)
    return _fixed_counts(n, lengths, budget, floor=n_min, n_max=n_max)


def even_allocation(expected_lengths: np.ndarray, budget: float, active: np.ndarray, n_max: int) -> Allocation:
    """Spend ``budget`` evenly on the ``active`` prompts, none on the others (``n = 0``), propensity 1: each active
    prompt gets the largest common count ``k <= n_max`` that fits, then the tokens left add one rollout at a time to
    active prompts in batch order (first fit) while any fits. ``spent <= budget`` always; if no prompt is active
    nothing is spent. ``frac_at_min`` is the share of prompts given no rollout."""
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    on = np.asarray(active, dtype=bool)
    require_positive_ints(n_max=n_max)
    n = np.zeros(lengths.shape, dtype=np.int64)
    active_cost = float(lengths[on].sum())
    if active_cost > 0:
        n[on] = min(int(n_max), int(np.floor(float(budget) / active_cost)))
        while n[on][0] > 0 and float(n @ lengths) > budget:  # the division and the spend round differently
            n[on] -= 1
        for q in np.flatnonzero(on & (n < n_max)):
            n[q] += 1
            if float(n @ lengths) > budget:  # the spend as reported, so the check and the report agree exactly
                n[q] -= 1
    return _fixed_counts(n, lengths, budget, floor=0, n_max=n_max)


def _fixed_counts(n: np.ndarray, lengths: np.ndarray, budget: float, floor: int, n_max: int) -> Allocation:
    """The :class:`Allocation` of counts chosen without a λ search (propensity 1); ``frac_at_min`` counts ``floor``."""
    spent = float(n @ lengths)
    return Allocation(
        n=n,
        p_pre=np.ones(lengths.shape),
        lam=0.0,
        budget=float(budget),
        spent=spent,
        budget_error=(float(budget) - spent) / float(budget),
        frac_at_min=float(np.mean(n == floor)),
        frac_at_max=float(np.mean(n == n_max)),
        bisection_steps=0,
    )


def _rounded_path_start(
    scores: np.ndarray, lengths: np.ndarray, budget: float, low: np.ndarray, n_max: int
) -> np.ndarray:
    """SPEC §2's reference rule: ``n = clip(round(s / sqrt(lam L)))`` after 10 bisection steps on ``log lam`` in
    [-20, 20], then the longest prompts trimmed towards their lower bound until the spend fits (vectorised)."""

    rate = scores / np.sqrt(lengths)

    def counts(log_lam: float) -> np.ndarray:
        return np.clip(np.rint(rate * np.exp(-0.5 * log_lam)), low, n_max)

    lo, hi = -20.0, 20.0
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(counts(mid) @ lengths) > budget else (lo, mid)
    n = counts(0.5 * (lo + hi))
    excess = float(n @ lengths) - budget
    if excess <= 0:
        return n
    order = np.argsort(-lengths, kind="stable")
    room = ((n - low) * lengths)[order]
    before = np.concatenate(([0.0], np.cumsum(room)[:-1]))
    last = int(np.searchsorted(before + room, excess))  # the prompt whose trim covers what is still over
    n = n.copy()
    n[order[:last]] = low[order[:last]]
    if last < order.size:
        i = order[last]
        n[i] -= np.ceil((excess - before[last]) / lengths[i] - 1e-12)
    return np.maximum(n, low)


def _guess(rate: np.ndarray, lengths: np.ndarray, budget: float) -> float:
    """The unclipped continuous optimum's multiplier: ``sum_q (rate_q / sqrt(lam)) L_q = B``."""
    spend_at_one = float(rate @ lengths)
    return (spend_at_one / budget) ** 2 if spend_at_one > 0 else 0.0


def _bisect_spend(
    counts, lengths: np.ndarray, budget: float, lo: float, hi: float, guess: float = 0.0
) -> tuple[float, float, int]:
    """Shrink ``[lo, hi]`` (in ``log lam``) keeping ``spend(hi) <= budget < spend(lo)`` until every prompt's count
    differs by at most one between its ends (the marginal-gain finish does the rest exactly), or the bracket is
    one float wide. The first two probes bracket ``guess`` (the unclipped optimum) by a factor of 2."""
    steps = 0
    n_lo = counts(lo)
    probes = [guess * 2.0, guess / 2.0]  # popped first, each used only if inside the bracket
    while steps < _MAX_BISECTION_STEPS:
        mid = np.sqrt(lo * hi)
        while probes:
            probe = probes.pop()
            if lo < probe < hi:
                mid = probe
                break
        if not (lo < mid < hi):
            break
        steps += 1
        n_mid = counts(mid)
        if float(n_mid @ lengths) > budget:
            lo, n_lo = mid, n_mid
            continue
        hi = mid
        if np.all(n_lo - n_mid <= 1):
            break
    return lo, hi, steps


def _fill_by_marginal_gain(
    n: np.ndarray,
    rate2: np.ndarray,
    lengths: np.ndarray,
    budget: float,
    n_max: int,
    max_rounds: int = 64,
) -> np.ndarray:
    """Spend what is left of the budget on the best increments by gain per token (``rate2 / (n (n + 1))``),
    first fit.

    Each round offers every prompt's next increment, best first (ties by prompt index), and takes each one that
    still fits; rounds repeat while any increment was taken."""
    n = n.copy()
    left = budget - float(n @ lengths)
    for _ in range(max_rounds):
        cand = np.flatnonzero((n < n_max) & (lengths <= left) & (rate2 > 0))
        if cand.size == 0:
            break
        gain = rate2[cand] / (n[cand] * (n[cand] + 1))
        # at most left / min(L) of them can fit: order only the best that many (ties at the cut included)
        room = int(left / float(lengths[cand].min())) + 1
        if room < cand.size:
            cut = np.partition(-gain, room - 1)[room - 1]
            keep = -gain <= cut
            cand, gain = cand[keep], gain[keep]
        order = cand[np.lexsort((cand, -gain))]
        taken = order[_first_fit(lengths[order], left)]
        if taken.size == 0:
            break
        n[taken] += 1
        while taken.size and float(n @ lengths) > budget:  # float rounding of the running sum: give back the last
            n[taken[-1]] -= 1
            taken = taken[:-1]
        if taken.size == 0:
            break
        left = budget - float(n @ lengths)
    return n


def _improve_by_exchange(
    n: np.ndarray,
    rate2: np.ndarray,
    lengths: np.ndarray,
    budget: float,
    low: np.ndarray,
    n_max: int,
    max_moves: int = 32,
    candidates: int = 16,
) -> np.ndarray:
    """Local search after the fill: give prompt ``j`` one more rollout, paid by the unused budget and one fewer
    rollout elsewhere, when ``J`` drops; the best move among the ``candidates`` best increments, each paired with
    the cheapest of the ``4 * candidates`` cheapest decrements (in ``J``) that frees enough tokens, or else with a
    run of the cheapest decrements per token (:func:`_multi_donor_move`). Repeats while it helps, then refills.

    Gains and losses are in ``J`` units (``s^2 / L = rate2 * L``): ``gain_j = a_j / (n_j (n_j + 1))``,
    ``loss_i = a_i / (n_i (n_i - 1))``."""
    a = rate2 * lengths
    n = n.copy()
    moved = False
    for _ in range(max_moves):
        left = budget - float(n @ lengths)
        up = np.flatnonzero((n < n_max) & (a > 0))
        if up.size == 0:
            break
        gain = a[up] / (n[up] * (n[up] + 1))
        loss = np.where(n > low, a / (n * np.maximum(n - 1, 1)), np.inf)
        tol = 1e-13 * float(a @ (1.0 / n))
        if float(gain.max()) - float(loss.min()) <= tol:
            break  # no increment is worth more than the cheapest decrement
        if up.size > candidates:
            pick = np.argpartition(-gain, candidates - 1)[:candidates]
            up, gain = up[pick], gain[pick]
        donors = np.flatnonzero(np.isfinite(loss))
        if donors.size > 4 * candidates:  # the cheapest decrements only
            donors = donors[np.argpartition(loss[donors], 4 * candidates - 1)[: 4 * candidates]]
        frees = lengths[donors][None, :] >= (lengths[up] - left)[:, None]
        frees &= donors[None, :] != up[:, None]  # not from the same prompt
        pair_loss = np.where(frees, loss[donors][None, :], np.inf)
        best = np.argmin(pair_loss, axis=1)
        donor = donors[best]
        net = gain - pair_loss[np.arange(up.size), best]
        k = int(np.argmax(net))
        if net[k] > tol:
            taken = donor[k : k + 1]
        else:  # no single decrement pays: try several, cheapest per token first
            k, taken = _multi_donor_move(n, a, lengths, low, up, gain, left, tol, 4 * candidates)
            if taken is None:
                break
        n[up[k]] += 1
        np.subtract.at(n, taken, 1)
        if float(n @ lengths) > budget:  # float rounding at the edge: undo and stop
            n[up[k]] -= 1
            np.add.at(n, taken, 1)
            break
        moved = True
    return _fill_by_marginal_gain(n, rate2, lengths, budget, n_max) if moved else n


def _multi_donor_move(
    n: np.ndarray,
    a: np.ndarray,
    lengths: np.ndarray,
    low: np.ndarray,
    up: np.ndarray,
    gain: np.ndarray,
    left: float,
    tol: float,
    levels: int,
    depth: int = 4,
) -> tuple[int, np.ndarray | None]:
    """The best move that pays for one increment ``up[k]`` with a prefix of the ``levels`` cheapest decrements per
    token (up to ``depth`` from one prompt, in order). Returns ``(k, donor prompts)``, or ``(0, None)``."""
    # the cheapest decrement levels lie among the prompts whose first decrement is cheapest (deeper ones cost more)
    can = np.flatnonzero(n > low)
    if can.size == 0:
        return 0, None
    if can.size > levels:
        first = a[can] / (n[can] * (n[can] - 1) * lengths[can])
        can = can[np.argpartition(first, levels - 1)[:levels]]
    room = np.minimum(n[can] - low[can], depth).astype(np.int64)
    src = np.repeat(can, room)
    level = np.arange(src.size) - np.repeat(np.cumsum(room) - room, room)
    before = n[src] - level
    loss = a[src] / (before * (before - 1))
    per_token = loss / lengths[src]
    if src.size > levels:
        keep = np.argpartition(per_token, levels - 1)[:levels]
        src, level, loss, per_token = src[keep], level[keep], loss[keep], per_token[keep]
    order = np.lexsort((level, src, per_token))
    src, loss = src[order], loss[order]
    freed, lost = np.cumsum(lengths[src]), np.cumsum(loss)
    pos = np.searchsorted(freed, lengths[up] - left, side="left")
    ok = pos < src.size
    first_own = np.array([int(np.argmax(src == j)) if np.any(src == j) else src.size for j in up])
    ok &= first_own > pos  # a prompt does not pay for itself
    net = np.where(ok, gain - lost[np.minimum(pos, src.size - 1)], -np.inf)
    k = int(np.argmax(net))
    if not net[k] > tol:
        return 0, None
    return k, src[: pos[k] + 1]


def _first_fit(costs: np.ndarray, left: float) -> np.ndarray:
    """Which items, offered in order, a first-fit pass takes within ``left`` (vectorised by runs that fit)."""
    taken = np.zeros(costs.size, dtype=bool)
    start = 0
    while start < costs.size and left > 0:
        fits = np.cumsum(costs[start:]) <= left
        run = costs.size - start if fits.all() else int(np.argmin(fits))
        taken[start : start + run] = True
        left -= float(costs[start : start + run].sum())
        start += run
        # skip items that no longer fit
        rest = np.flatnonzero(costs[start:] <= left)
        if rest.size == 0:
            break
        start += int(rest[0])
    return taken


def _lower_bounds(lower: np.ndarray | None, shape: tuple[int, ...], n_min: int, n_max: int) -> np.ndarray:
    if lower is None:
        return np.full(shape, float(n_min))
    low = np.asarray(lower, dtype=np.float64)
    if low.shape != shape or not np.all(np.isfinite(low)) or np.any(low != np.round(low)):
        raise ValueError(f"lower must hold one integer per prompt {shape}, got shape {low.shape}")
    if np.any(low < n_min) or np.any(low > n_max):
        raise ValueError(f"lower bounds must lie in [n_min, n_max] = [{n_min}, {n_max}]")
    return low


def measurement_floor(
    prompt_ids: Sequence[str], step: int, seed: int, n_min: int = 1, floor: int = 2, reprobe: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt lower bounds that keep every prompt measurable: ``floor`` rollouts (two are the fewest that give
    a within-group baseline and a variance) with probability ``reprobe``, drawn per (seed, step, prompt) so runs
    are reproducible, else ``n_min``. Returns ``(lower, drawn)``; ``reprobe=1`` draws nothing.

    When the floor binds (the prompt would otherwise get fewer), its propensity is multiplied by ``reprobe``
    (see ``DuetController.plan``), the importance weight that keeps its expected gradient unchanged."""
    check_measurement_options(floor=floor, reprobe=reprobe)
    m = len(prompt_ids)
    if reprobe >= 1.0:
        drawn = np.ones(m, dtype=bool)
    else:
        drawn = np.array(
            [RolloutRandom(rollout_seed(seed, step, f"reprobe/{pid}")).uniform() < reprobe for pid in prompt_ids],
            dtype=bool,
        )
    return np.where(drawn, float(max(floor, n_min)), float(n_min)), drawn


def _rates(scores: np.ndarray, lengths: np.ndarray, length_cost: str) -> np.ndarray:
    """``r_q`` with gain per token ``r_q**2 / (n (n + 1))``: ``s / sqrt(L)`` or ``s / L``; all equal (no information
    to tell prompts apart, all-zero scores included) becomes all ones, i.e. every prompt alike."""
    if length_cost not in LENGTH_COSTS:
        raise ValueError(f"length_cost must be one of {LENGTH_COSTS}, got {length_cost!r}")
    rate = scores / (np.sqrt(lengths) if length_cost == "sqrt" else lengths)
    return np.ones_like(rate) if np.all(rate == rate[0]) else rate


def free_counts(
    scores: np.ndarray,
    expected_lengths: np.ndarray,
    lam: float,
    n_min: int = 1,
    n_max: int = 32,
    length_cost: str = "sqrt",
) -> np.ndarray:
    """What the threshold rule would give each prompt at multiplier ``lam`` without per-prompt lower bounds
    (to tell where a measurement floor binds)."""
    rate = _rates(np.asarray(scores, dtype=np.float64), np.asarray(expected_lengths, dtype=np.float64), length_cost)
    k = np.floor(0.5 + np.sqrt(0.25 + rate * rate / lam)) if lam > 0 else np.full(rate.shape, float(n_max))
    return np.minimum(np.maximum(k, n_min), n_max).astype(np.int64)


def check_measurement_options(*, floor: int = 2, reprobe: float = 1.0) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless the options are valid."""
    require_positive_ints(floor=floor)
    require_probabilities(reprobe=reprobe)


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
    length_cost: str = "sqrt",
) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless the given allocation options are
    valid; with ``budget_fraction`` and ``group_size``, also that the budget leaves ``n_min`` rollouts per prompt
    (``b * G >= n_min``)."""
    if budget_fraction is not None and not (isinstance(budget_fraction, int | float) and 0.0 < budget_fraction <= 1.0):
        raise ValueError(f"budget_fraction must be in (0, 1], got {budget_fraction!r}")
    require_positive_ints(n_min=n_min, n_max=n_max)
    if n_min > n_max:
        raise ValueError(f"n_min ({n_min}) must not exceed n_max ({n_max})")
    if not (isinstance(eps_pre, int | float) and 0.0 < eps_pre <= 1.0):
        raise ValueError(f"eps_pre must be in (0, 1], got {eps_pre!r}")
    if length_cost not in LENGTH_COSTS:
        raise ValueError(f"length_cost must be one of {LENGTH_COSTS}, got {length_cost!r}")
    if budget_fraction is not None and group_size is not None and budget_fraction * group_size < n_min:
        raise ValueError(
            f"budget_fraction times rollout.n ({group_size}) must be >= n_min ({n_min}) (n_min rollouts per prompt), "
            f"got {budget_fraction!r}"
        )
