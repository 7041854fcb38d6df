"""The in-server half of ARRoL's online pruning (arXiv 2603.24840): read a rollout's first ``at`` tokens, score its
chance of success with a linear quality head, and keep it with a probability chosen by the trainer.

The trainer (:class:`~duet_verl.core.policies.arrol.ArrolPolicy`) sends, per prompt, a :class:`ProbeRule`: the
detection length, the head's weights and two keep probabilities, one for a rollout the head calls correct and one for
a rollout it calls wrong (:func:`keep_probabilities`). The server's :class:`~duet_verl.core.monitor.StopAbortMonitor`
feeds :class:`ProbeFeatures` with each token's top log-probs and, at token ``at``, keeps the rollout with probability
``q·keep_correct + (1 − q)·keep_wrong`` (``q`` the head's success probability), else prunes it through the same abort
path DUET's monitor uses. The features it saw travel back in the rollout's report, so the head learns from them
once the rollout is scored. Nothing here imports verl or vLLM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from duet_verl.core.checks import require_fractions, require_positive_ints, require_probabilities

__all__ = ["PROBE_FEATURES", "ProbeFeatures", "ProbeRule", "head_probability", "keep_probabilities"]

# what the head reads of the first `at` tokens (all from the top-k log-probs the monitor already receives)
PROBE_FEATURES = (
    "mean_top1_logprob",  # mean log-prob of the most likely token
    "mean_margin",  # mean p1 - p2
    "uncertain_fraction",  # share of positions whose most likely token has p1 < 0.5
    "recent_top1_logprob",  # the same as the first, exponentially weighted toward the last ~16 tokens
)
_RECENT = 1.0 / 16.0  # weight of the newest position in recent_top1_logprob


@dataclass(frozen=True)
class ProbeRule:
    """One prompt's pruning rule: detection length, the quality head, and the keep probabilities."""

    at: int  # tokens generated when the rollout is scored (the paper's detection length)
    weights: tuple[float, ...]  # the head's weights, one per PROBE_FEATURES entry
    bias: float
    keep_correct: float  # keep probability of a rollout the head calls correct (q = 1)
    keep_wrong: float  # ... and of one it calls wrong (q = 0)

    def __post_init__(self):
        require_positive_ints(at=self.at)
        if len(self.weights) != len(PROBE_FEATURES):
            raise ValueError(f"weights must have {len(PROBE_FEATURES)} entries, got {len(self.weights)}")
        if not all(math.isfinite(w) for w in (*self.weights, self.bias)):
            raise ValueError("weights and bias must be finite")
        require_probabilities(keep_correct=self.keep_correct, keep_wrong=self.keep_wrong)

    def keep_probability(self, features: Sequence[float]) -> tuple[float, float]:
        """``(q, keep)``: the head's success probability and this rollout's keep probability."""
        q = head_probability(self.weights, self.bias, features)
        return q, q * self.keep_correct + (1.0 - q) * self.keep_wrong

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["weights"] = list(self.weights)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeRule:
        data = dict(data)
        data["weights"] = tuple(float(w) for w in data["weights"])
        return cls(**data)


def head_probability(weights: Sequence[float], bias: float, features: Sequence[float]) -> float:
    """The linear head's success probability ``sigmoid(bias + w·x)`` (overflow-safe)."""
    z = bias + sum(w * x for w, x in zip(weights, features, strict=True))
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def keep_probabilities(success: float, keep: float, target: float, min_keep: float) -> tuple[float, float]:
    """``(keep_correct, keep_wrong)`` for a prompt whose rollouts succeed with probability ``success``: with a perfect
    head, a share ``keep`` of the group survives and a share ``target`` of the survivors is correct
    (``keep_correct = target·keep / success``, ``keep_wrong = (1 − target)·keep / (1 − success)``), each clipped to
    ``[min_keep, 1]``. A head that knows nothing (``q = success`` for every rollout) keeps every rollout with
    probability ``keep``: random pruning, which leaves the group's ratio as it was."""
    require_fractions(success=success)
    require_probabilities(keep=keep, target=target, min_keep=min_keep)
    s = min(max(success, 1e-6), 1.0 - 1e-6)
    return (
        min(1.0, max(min_keep, target * keep / s)),
        min(1.0, max(min_keep, (1.0 - target) * keep / (1.0 - s))),
    )


class ProbeFeatures:
    """Running :data:`PROBE_FEATURES` of one rollout, one call per token."""

    __slots__ = ("_n", "_top1", "_margin", "_uncertain", "_recent")

    def __init__(self):
        self._n = 0
        self._top1 = self._margin = self._uncertain = 0.0
        self._recent = None

    def add(self, top_logprobs: Sequence[float]) -> None:
        """One position's top log-probs, descending."""
        lp1 = top_logprobs[0]
        p1 = math.exp(lp1)
        self._n += 1
        self._top1 += lp1
        self._margin += p1 - (math.exp(top_logprobs[1]) if len(top_logprobs) > 1 else 0.0)
        self._uncertain += p1 < 0.5
        self._recent = lp1 if self._recent is None else self._recent + _RECENT * (lp1 - self._recent)

    def values(self) -> list[float]:
        """The features so far, in :data:`PROBE_FEATURES` order (zeros before any token)."""
        n = max(self._n, 1)
        return [self._top1 / n, self._margin / n, self._uncertain / n, self._recent or 0.0]
