"""Pre-rollout surrogate of each prompt's informativeness ``s_q`` and rollout length ``L_q`` (SPEC §1).

* Warm prompts (at least ``k_warmup`` observations): ``s_q = max(sigma_min, running mean of sigma_t)``,
  where ``sigma_t`` is the within-group std of ``g_i = A_i * sum_t log pi_old(y_i,t)`` at step t
  (:func:`group_signal_std`).
* Cold prompts: ``s_q = max(sigma_min, ridge(features_q))``. The ridge is fitted **online** from
  (features, sigma_t) pairs as training goes, shrunk toward an optional prior (a JSON file with
  ``{"intercept": a0, "coef": [a1, ...], "sigma_min": ...}``). A missing feature (NaN) is replaced by
  the median of recently seen features.
* ``L_q``: running mean of the prompt's kept rollout lengths; for a cold prompt the mean of a sliding
  window of recent kept lengths; with no history at all, ``default_length`` (the response cap).

Per-prompt state is keyed by a stable prompt id, bounded by an LRU, and round-trips exactly through
:meth:`PromptSurrogate.state_dict` / :meth:`PromptSurrogate.load_state_dict` (plain Python types).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnlineRidge", "PromptSurrogate", "SurrogatePrediction", "group_signal_std", "pearson"]


class OnlineRidge:
    """Ridge regression ``y ~ intercept + coef . x`` from streamed sufficient statistics.

    Minimises ``sum_i decay^(age_i) (y_i - w.x_i)^2 + l2 * ||w - w_prior||^2`` (intercept included), so
    with no data it predicts the prior and with much data it approaches least squares.
    """

    def __init__(
        self, num_features: int = 1, l2: float = 1.0, prior: Sequence[float] | None = None, decay: float = 1.0
    ):
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive integer, got {num_features!r}")
        if not (l2 > 0 and math.isfinite(l2)):
            raise ValueError(f"l2 must be a finite positive number, got {l2!r}")
        if not (0.0 < decay <= 1.0):
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        dim = num_features + 1
        prior_arr = np.zeros(dim) if prior is None else np.asarray(prior, dtype=np.float64)
        if prior_arr.shape != (dim,) or not np.all(np.isfinite(prior_arr)):
            raise ValueError(f"prior must hold {dim} finite values (intercept, coef...), got {prior!r}")
        self.num_features, self.l2, self.decay = num_features, float(l2), float(decay)
        self.prior = prior_arr
        self._xtx = np.zeros((dim, dim))
        self._xty = np.zeros(dim)
        self.count = 0
        self._weights = prior_arr.copy()

    @property
    def weights(self) -> np.ndarray:
        """``[intercept, coef...]``."""
        return self._weights

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add observations ``x`` (N, d) → ``y`` (N,) and refit."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.num_features)
        y = np.asarray(y, dtype=np.float64).ravel()
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        ok = np.all(np.isfinite(x), axis=1) & np.isfinite(y)
        if not ok.any():
            return
        design = np.hstack([np.ones((int(ok.sum()), 1)), x[ok]])
        self._xtx = self.decay * self._xtx + design.T @ design
        self._xty = self.decay * self._xty + design.T @ y[ok]
        self.count += int(ok.sum())
        eye = np.eye(self.num_features + 1)
        self._weights = np.linalg.solve(self._xtx + self.l2 * eye, self._xty + self.l2 * self.prior)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for ``x`` (N, d)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.num_features)
        return self._weights[0] + x @ self._weights[1:]

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain Python)."""
        return {
            "num_features": self.num_features,
            "l2": self.l2,
            "decay": self.decay,
            "prior": self.prior.tolist(),
            "xtx": self._xtx.tolist(),
            "xty": self._xty.tolist(),
            "count": self.count,
            "weights": self._weights.tolist(),
        }

    def load_statistics(self, state: dict[str, Any]) -> None:
        """Restore the fitted statistics of :meth:`state_dict` output; this model's own ``l2``, ``decay`` and prior
        stay as constructed (they are settings)."""
        if int(state["num_features"]) != self.num_features:
            raise ValueError(f"num_features: checkpoint has {state['num_features']}, this model {self.num_features}")
        self._xtx = np.asarray(state["xtx"], dtype=np.float64)
        self._xty = np.asarray(state["xty"], dtype=np.float64)
        self.count = int(state["count"])
        self._weights = np.asarray(state["weights"], dtype=np.float64)


@dataclass(frozen=True)
class SurrogatePrediction:
    """Per-prompt predictions for one batch."""

    scores: np.ndarray  # s_q, (M,)
    lengths: np.ndarray  # L_q, (M,)
    cold: np.ndarray  # bool (M,): score came from the ridge, not from observations


# Per-prompt record layout (a list, for compact state): [sigma_count, sigma_mean, sigma_m2, len_count, len_mean]
_SIG_N, _SIG_MEAN, _SIG_M2, _LEN_N, _LEN_MEAN = range(5)


class PromptSurrogate:
    """Online per-prompt statistics plus the cold-start ridge. See the module docstring."""

    def __init__(
        self,
        default_length: float,
        sigma_min: float = 1e-3,
        k_warmup: int = 1,
        max_prompts: int = 50_000,
        length_window: int = 1024,
        feature_window: int = 1024,
        num_features: int = 1,
        ridge_l2: float = 1.0,
        ridge_prior: Sequence[float] | None = None,
        ridge_decay: float = 1.0,
    ):
        if not (default_length > 0 and math.isfinite(default_length)):
            raise ValueError(f"default_length must be a finite positive number, got {default_length!r}")
        if not (sigma_min >= 0 and math.isfinite(sigma_min)):
            raise ValueError(f"sigma_min must be finite and >= 0, got {sigma_min!r}")
        for name, value in (
            ("k_warmup", k_warmup),
            ("max_prompts", max_prompts),
            ("length_window", length_window),
            ("feature_window", feature_window),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.default_length, self.sigma_min, self.k_warmup = float(default_length), float(sigma_min), k_warmup
        self.max_prompts = max_prompts
        self.ridge = OnlineRidge(num_features, ridge_l2, ridge_prior, ridge_decay)
        self._prompts: OrderedDict[str, list[float]] = OrderedDict()
        self._recent_lengths: deque[float] = deque(maxlen=length_window)
        self._recent_features: deque[tuple[float, ...]] = deque(maxlen=feature_window)

    @classmethod
    def from_ridge_file(cls, path: str | Path, **kwargs) -> PromptSurrogate:
        """Build with a fitted prior from JSON ``{"intercept", "coef": [...], "sigma_min"?}``."""
        data = json.loads(Path(path).read_text())
        try:
            prior = [float(data["intercept"]), *(float(c) for c in data["coef"])]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: ridge file needs 'intercept' and a 'coef' list") from err
        kwargs.setdefault("num_features", len(prior) - 1)
        if "sigma_min" in data:  # the fitted floor takes precedence over the configured one
            kwargs["sigma_min"] = float(data["sigma_min"])
        return cls(ridge_prior=prior, **kwargs)

    def __len__(self) -> int:
        return len(self._prompts)

    # -- prediction ------------------------------------------------------------------------------
    def predict(self, prompt_ids: Sequence[str], features: np.ndarray | None = None) -> SurrogatePrediction:
        """Scores and expected lengths for a batch. ``features`` (M, d) may contain NaN for missing values."""
        m = len(prompt_ids)
        feats = self._fill_features(features, m)
        ridge = np.maximum(self.sigma_min, self.ridge.predict(feats))
        cold_length = float(np.mean(self._recent_lengths)) if self._recent_lengths else self.default_length
        scores, lengths = ridge.copy(), np.full(m, cold_length)
        cold = np.ones(m, dtype=bool)
        for i, pid in enumerate(prompt_ids):
            rec = self._prompts.get(str(pid))
            if rec is None:
                continue
            if rec[_SIG_N] >= self.k_warmup:
                scores[i] = max(self.sigma_min, rec[_SIG_MEAN])
                cold[i] = False
            if rec[_LEN_N] > 0:
                lengths[i] = rec[_LEN_MEAN]
        return SurrogatePrediction(scores=scores, lengths=lengths, cold=cold)

    def _fill_features(self, features: np.ndarray | None, m: int) -> np.ndarray:
        d = self.ridge.num_features
        feats = np.full((m, d), np.nan) if features is None else np.array(features, dtype=np.float64).reshape(m, d)
        missing = ~np.isfinite(feats)
        if missing.any():
            fill = np.median(np.asarray(self._recent_features), axis=0) if self._recent_features else np.zeros(d)
            feats[missing] = np.broadcast_to(fill, feats.shape)[missing]
        return feats

    # -- learning --------------------------------------------------------------------------------
    def update(
        self,
        prompt_ids: Sequence[str],
        sigmas: np.ndarray,
        kept_lengths: Sequence[Sequence[float]],
        features: np.ndarray | None = None,
    ) -> None:
        """Fold in one step's observations.

        Args:
            prompt_ids: the step's prompts (M,).
            sigmas: observed ``sigma_t`` per prompt, NaN where the group had fewer than two kept rollouts.
            kept_lengths: per prompt, the lengths of its kept (not aborted) rollouts.
            features: the prompts' cold-start features (M, d), NaN where unknown; used to fit the ridge.
        """
        sig = np.asarray(sigmas, dtype=np.float64).ravel()
        if sig.size != len(prompt_ids) or len(kept_lengths) != len(prompt_ids):
            raise ValueError("prompt_ids, sigmas and kept_lengths must have the same length")
        if features is not None:
            feats = np.asarray(features, dtype=np.float64).reshape(len(prompt_ids), self.ridge.num_features)
            known = np.all(np.isfinite(feats), axis=1)
            self._recent_features.extend(tuple(row) for row in feats[known].tolist())
            fit = known & np.isfinite(sig)
            if fit.any():
                self.ridge.update(feats[fit], sig[fit])
        for pid, s, lengths in zip(prompt_ids, sig.tolist(), kept_lengths, strict=True):
            rec = self._touch(str(pid))
            if math.isfinite(s):
                rec[_SIG_N] += 1
                delta = s - rec[_SIG_MEAN]
                rec[_SIG_MEAN] += delta / rec[_SIG_N]
                rec[_SIG_M2] += delta * (s - rec[_SIG_MEAN])
            for length in lengths:
                rec[_LEN_N] += 1
                rec[_LEN_MEAN] += (float(length) - rec[_LEN_MEAN]) / rec[_LEN_N]
                self._recent_lengths.append(float(length))

    def _touch(self, pid: str) -> list[float]:
        rec = self._prompts.pop(pid, None)
        if rec is None:
            rec = [0, 0.0, 0.0, 0, 0.0]
        self._prompts[pid] = rec
        while len(self._prompts) > self.max_prompts:
            self._prompts.popitem(last=False)
        return rec

    def observations(self, prompt_id: str) -> int:
        """How many sigma observations a prompt has (0 if unknown or evicted)."""
        rec = self._prompts.get(str(prompt_id))
        return 0 if rec is None else int(rec[_SIG_N])

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically, as plain Python types (LRU order preserved)."""
        return {
            "config": {
                "default_length": self.default_length,
                "sigma_min": self.sigma_min,
                "k_warmup": self.k_warmup,
                "max_prompts": self.max_prompts,
                "length_window": self._recent_lengths.maxlen,
                "feature_window": self._recent_features.maxlen,
            },
            "ridge": self.ridge.state_dict(),
            "prompts": [[pid, list(rec)] for pid, rec in self._prompts.items()],
            "recent_lengths": list(self._recent_lengths),
            "recent_features": [list(f) for f in self._recent_features],
        }

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Restore the *learned* state of :meth:`state_dict` output (per-prompt records, ridge statistics, recent
        windows); this surrogate's own settings stay as constructed. Returns the settings that differ from the
        checkpoint's, as ``{name: (checkpoint value, current value)}``."""
        saved, current = state["config"], self.state_dict()["config"]
        changed = {k: (saved[k], current[k]) for k in current if k in saved and saved[k] != current[k]}
        self.ridge.load_statistics(state["ridge"])
        self._prompts = OrderedDict((str(pid), list(rec)) for pid, rec in state["prompts"])
        while len(self._prompts) > self.max_prompts:
            self._prompts.popitem(last=False)
        self._recent_lengths.clear()
        self._recent_lengths.extend(float(x) for x in state["recent_lengths"])
        self._recent_features.clear()
        self._recent_features.extend(tuple(float(v) for v in f) for f in state["recent_features"])
        return changed


def group_signal_std(
    advantages: np.ndarray, seq_logprob_sums: np.ndarray, group_ids: Sequence, kept: np.ndarray
) -> dict[Any, float]:
    """``sigma_t`` per group: population std of ``g_i = A_i * sum_t log pi_old(y_i,t)`` over kept rollouts.

    Groups with fewer than two kept rollouts are left out.
    """
    adv = np.asarray(advantages, dtype=np.float64).ravel()
    lp = np.asarray(seq_logprob_sums, dtype=np.float64).ravel()
    keep = np.asarray(kept, dtype=bool).ravel()
    groups = np.asarray(group_ids, dtype=object).ravel()
    if not (adv.size == lp.size == keep.size == groups.size):
        raise ValueError("advantages, seq_logprob_sums, group_ids and kept must have the same length")
    if not keep.any():
        return {}
    uniq, inverse = np.unique(groups[keep].astype(str), return_inverse=True)
    g = adv[keep] * lp[keep]
    count = np.bincount(inverse, minlength=uniq.size)
    mean = np.bincount(inverse, weights=g, minlength=uniq.size) / count
    var = np.bincount(inverse, weights=(g - mean[inverse]) ** 2, minlength=uniq.size) / count
    std = np.sqrt(var)
    # map back to the callers' original (unstringified) ids
    original = {str(gid): gid for gid in groups[keep]}
    return {original[u]: float(s) for u, s, c in zip(uniq, std, count, strict=True) if c >= 2}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, NaN when undefined (fewer than two points or zero variance)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
