"""The statistics of the quickstart's paired-seed experiment: means with Student-t 95 % intervals, paired
differences by seed, and the area under an accuracy-vs-tokens curve.

Seeds pair the policies: seed ``k`` fixes the data order and the evaluation sampling of every policy, so the
difference of two policies on the same seed removes what the seed alone explains. With one seed no interval exists
(``None``): the run is a demo, not a measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["auc_tokens", "mean_ci95", "paired_difference"]


def mean_ci95(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and its two-sided 95 % Student-t interval ``[lo, hi]`` (``None`` for fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, df=x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return mean, [mean - half, mean + half]


def paired_difference(values: dict[int, float], baseline: dict[int, float]) -> dict[str, object]:
    """``values - baseline`` on the seeds both have: ``{"mean", "ci95", "seeds"}`` (``ci95`` as in
    :func:`mean_ci95`)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        raise ValueError("paired_difference needs at least one seed in common")
    mean, ci = mean_ci95([values[s] - baseline[s] for s in seeds])
    return {"mean": mean, "ci95": ci, "seeds": seeds}


def auc_tokens(curve: Sequence[dict[str, float]]) -> float:
    """Area under held-out accuracy against cumulative rollout tokens (trapezoids, in accuracy × tokens), the
    curve's points sorted by tokens; 0 for fewer than two points."""
    points = sorted((float(c["tokens"]), float(c["accuracy"])) for c in curve)
    if len(points) < 2:
        return 0.0
    tokens, accuracy = np.array(points).T
    return float(np.trapezoid(accuracy, tokens))
