"""Length gates K1/K2 and per-prompt stop thresholds (SPEC §3)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from duet_verl.core.checks import require_positive_ints

__all__ = ["THRESHOLD_MODES", "GateEstimator", "censored_quantiles", "check_threshold_options", "stop_thresholds"]


class GateEstimator:
    """K1/K2 from percentiles of recent rollout lengths, refreshed every ``update_every`` steps.

    Starts at ``k1 = k1_init * cap`` and ``k2 = k2_init * cap``. Every ``update_every`` calls of
    :meth:`step`, once ``min_samples`` lengths are known, sets K1/K2 to the ``q1``/``q2`` quantiles of the
    window, with ``K1 >= k1_floor``, ``K2 >= K1 + min_gap`` and both ``<= cap``.

    An aborted rollout's length is only a lower bound of the length it would have had (right-censored at the
    abort). With ``censored=True`` (default) aborted lengths enter the window as censored and the quantiles are
    Kaplan–Meier estimates (:func:`censored_quantiles`): the abort lottery is independent of the rollout, and the
    ε-kept rollouts are exactly the uncensored sample beyond the abort point, so the estimate is consistent and
    K2 no longer drifts down by forgetting the rollouts it aborted. ``censored=False`` is the reference's rule
    (kept lengths only).
    """

    def __init__(
        self,
        cap: int,
        k1_init: float = 0.3,
        k2_init: float = 0.7,
        q1: float = 0.3,
        q2: float = 0.8,
        window: int = 1024,
        update_every: int = 10,
        min_samples: int = 32,
        k1_floor: int = 32,
        min_gap: int = 50,
        censored: bool = True,
    ):
        require_positive_ints(cap=cap)
        for name, value in (("k1_init", k1_init), ("k2_init", k2_init), ("q1", q1), ("q2", q2)):
            if not (0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if k1_init > k2_init:
            raise ValueError(f"k1_init ({k1_init}) must not exceed k2_init ({k2_init})")
        if q1 > q2:
            raise ValueError(f"q1 ({q1}) must not exceed q2 ({q2})")
        require_positive_ints(window=window, update_every=update_every, min_samples=min_samples)
        for name, value in (("k1_floor", k1_floor), ("min_gap", min_gap)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not isinstance(censored, bool):
            raise ValueError(f"censored must be true or false, got {censored!r}")
        self.cap, self.q1, self.q2, self.censored = cap, q1, q2, censored
        self.update_every, self.min_samples = update_every, min_samples
        self.k1_floor, self.min_gap = k1_floor, min_gap
        self.k1 = int(k1_init * cap)
        self.k2 = int(k2_init * cap)
        self._lengths: deque[int] = deque(maxlen=window)
        self._cut: deque[bool] = deque(maxlen=window)  # censored (aborted) flags, aligned with _lengths
        self._steps = 0

    def observe(self, lengths, censored=None) -> None:
        """Record rollout lengths; ``censored`` flags the aborted ones (dropped unless ``self.censored``)."""
        values = np.asarray(lengths).ravel()
        flags = np.zeros(values.size, dtype=bool) if censored is None else np.asarray(censored, dtype=bool).ravel()
        if flags.size != values.size:
            raise ValueError("censored must flag every length")
        if not self.censored:
            values, flags = values[~flags], flags[~flags]
        self._lengths.extend(int(x) for x in values)
        self._cut.extend(bool(c) for c in flags)

    @property
    def censored_fraction(self) -> float:
        """Share of censored (aborted) lengths in the window."""
        return float(np.mean(self._cut)) if self._cut else 0.0

    def step(self) -> bool:
        """Call once per training step; returns True when the gates were re-estimated."""
        self._steps += 1
        if self._steps % self.update_every or len(self._lengths) < self.min_samples:
            return False
        lengths = np.fromiter(self._lengths, dtype=np.float64)
        cut = np.fromiter(self._cut, dtype=bool)
        if cut.any():
            q1, q2 = censored_quantiles(lengths, cut, (self.q1, self.q2))
        else:
            q1, q2 = np.quantile(lengths, self.q1), np.quantile(lengths, self.q2)
        k1 = min(max(int(q1), self.k1_floor), self.cap)
        k2 = min(max(int(q2), k1 + self.min_gap), self.cap)
        self.k1, self.k2 = k1, k2
        return True

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state."""
        return {
            "k1": self.k1,
            "k2": self.k2,
            "steps": self._steps,
            "lengths": list(self._lengths),
            "censored": list(self._cut),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.k1, self.k2, self._steps = int(state["k1"]), int(state["k2"]), int(state["steps"])
        self._lengths.clear()
        self._lengths.extend(int(x) for x in state["lengths"])
        self._cut.clear()
        self._cut.extend(bool(c) for c in state.get("censored", [False] * len(state["lengths"])))


def censored_quantiles(lengths: np.ndarray, censored: np.ndarray, qs) -> list[float]:
    """Kaplan–Meier quantiles of right-censored lengths: for each ``q``, the smallest observed (uncensored) length
    at which the estimated distribution function reaches ``q``; where it never does (the longest lengths are
    censored), the largest length seen, a lower bound."""
    x = np.asarray(lengths, dtype=np.float64).ravel()
    cut = np.asarray(censored, dtype=bool).ravel()
    order = np.lexsort((cut, x))  # by length, events before censorings at a tie
    x, event = x[order], ~cut[order]
    at_risk = x.size - np.arange(x.size)
    cdf = 1.0 - np.cumprod(np.where(event, 1.0 - 1.0 / at_risk, 1.0))
    out = []
    for q in qs:
        hit = np.flatnonzero(event & (cdf >= q - 1e-12))
        out.append(float(x[hit[0]]) if hit.size else float(x[-1]))
    return out


def _rank01(values: np.ndarray) -> np.ndarray:
    """Average ranks scaled to [0, 1] (ties share their mean rank)."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    ranks = np.empty(values.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends - 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks / (values.size - 1)


def _minmax01(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return np.full(values.size, 0.5) if span <= 0 else (values - values.min()) / span


THRESHOLD_MODES = ("batch_percentile", "linear", "log_scale")


def check_threshold_options(threshold_mode: str, threshold_low: float, threshold_high: float) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless the options are valid."""
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"threshold_mode must be one of {THRESHOLD_MODES}, got {threshold_mode!r}")
    for name, value in (("threshold_low", threshold_low), ("threshold_high", threshold_high)):
        if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if threshold_low > threshold_high:
        raise ValueError(f"threshold_low ({threshold_low}) must not exceed threshold_high ({threshold_high})")


def stop_thresholds(
    scores: np.ndarray,
    expected_lengths: np.ndarray,
    mode: str = "batch_percentile",
    low: float = 0.5,
    high: float = 0.99,
) -> np.ndarray:
    """Per-prompt confidence thresholds from the info-rate ``s^2 / L``: more informative → higher threshold.

    Modes: ``batch_percentile`` (rank within the batch), ``linear`` (min-max of the rate),
    ``log_scale`` (min-max of its log). A batch of one prompt, or all-equal rates, gets the midpoint.
    """
    check_threshold_options(mode, low, high)
    s = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(expected_lengths, dtype=np.float64)
    if s.ndim != 1 or s.shape != lengths.shape or s.size == 0:
        raise ValueError(f"scores and expected_lengths must be equal-length 1-D arrays, got {s.shape}, {lengths.shape}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(lengths)) and np.all(lengths > 0) and np.all(s >= 0)):
        raise ValueError("scores must be finite >= 0 and expected_lengths finite > 0")
    rate = s * s / lengths
    if s.size == 1 or np.all(rate == rate[0]):
        return np.full(s.size, 0.5 * (low + high))
    if mode == "batch_percentile":
        unit = _rank01(rate)
    elif mode == "linear":
        unit = _minmax01(rate)
    else:
        unit = _minmax01(np.log(np.maximum(rate, np.finfo(np.float64).tiny)))
    return low + (high - low) * unit
