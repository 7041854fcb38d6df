"""Confidence signals of the next-token distribution, from its top-k log-probabilities (descending).

Every signal is "higher = more confident" and lies in [0, 1], so one threshold scale serves all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["SIGNALS", "entropy_certainty", "margin", "max_prob", "top_k_mass"]


def margin(top_logprobs: Sequence[float]) -> float:
    """p(top-1) - p(top-2); with a single log-prob, p(top-1)."""
    if len(top_logprobs) < 2:
        return math.exp(top_logprobs[0])
    return math.exp(top_logprobs[0]) - math.exp(top_logprobs[1])


def max_prob(top_logprobs: Sequence[float]) -> float:
    """p(top-1)."""
    return math.exp(top_logprobs[0])


def top_k_mass(top_logprobs: Sequence[float]) -> float:
    """Probability mass covered by the k returned tokens."""
    return min(1.0, sum(math.exp(lp) for lp in top_logprobs))


def entropy_certainty(top_logprobs: Sequence[float]) -> float:
    """``1 - H / ln(k + 1)`` with H the entropy of the top-k probabilities plus one bucket for the rest."""
    probs = [math.exp(lp) for lp in top_logprobs]
    rest = max(0.0, 1.0 - sum(probs))
    entropy = -sum(p * math.log(p) for p in (*probs, rest) if p > 0.0)
    return max(0.0, 1.0 - entropy / math.log(len(probs) + 1))


SIGNALS: dict[str, Callable[[Sequence[float]], float]] = {
    "margin": margin,
    "max_prob": max_prob,
    "entropy": entropy_certainty,
    "top_k_mass": top_k_mass,
}
