"""Pre-rollout surrogate of each prompt's informativeness ``s_q`` and rollout length ``L_q`` (SPEC §1).

* ``signal="grad_trace"`` (the paper's): warm prompts (at least ``k_warmup`` observations) score
  ``s_q = max(sigma_min, (kappa * cold_q + sum_k d^k sigma_k) / (kappa + sum_k d^k))``: the observed within-group
  std ``sigma_t`` of ``g_i = A_i * sum_t log pi_old(y_i,t)`` (:func:`group_signal_std`), decayed by ``decay`` per
  new observation of the prompt and shrunk toward the cold-start prediction ``cold_q`` with ``pseudo_count``
  ``kappa`` pseudo-observations. ``pseudo_count=0, decay=1`` is the reference's plain running mean, whose zero
  (a group whose rewards were all equal) is permanent.
* ``signal="pass_rate"``: the posterior uncertainty of the prompt's pass rate. Rewards (clipped to [0, 1], an
  aborted rollout a failure) update a Beta posterior ``Beta(k m + S_q, k (1 - m) + F_q)`` whose prior is centred
  on the population's pass rate ``m`` with strength ``k = prior_strength``; successes and failures decay by
  ``decay`` per observation. ``s_q = E[p (1 - p)] = a b / ((a + b) (a + b + 1))`` (the reward variance the
  posterior expects; not its square root, which ranks the same but allocates too flatly), times ``L_q`` with
  ``length_scale`` (then the allocation ``n ∝ s / L`` no longer penalises long prompts). A single rollout updates
  it, so no prompt's score ever reaches 0. Defaults (``prior_strength=0.5``, ``decay=0.8``) were chosen with
  ``duet-verl simulate`` (README).
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

from duet_verl.core.checks import require_positive_ints

__all__ = [
    "SCORE_SIGNALS",
    "SIGMA_SOURCES",
    "OnlineRidge",
    "PromptSurrogate",
    "SurrogatePrediction",
    "check_sigma_source",
    "group_signal_std",
    "pearson",
    "signal_advantages",
]


class OnlineRidge:
    """Ridge regression ``y ~ intercept + coef . x`` from streamed sufficient statistics.

    Minimises ``sum_i decay^(age_i) (y_i - w.x_i)^2 + l2 * ||w - w_prior||^2`` (intercept included), so
    with no data it predicts the prior and with much data it approaches least squares.
    """

    def __init__(
        self, num_features: int = 1, l2: float = 1.0, prior: Sequence[float] | None = None, decay: float = 1.0
    ):
        require_positive_ints(num_features=num_features)
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


# Per-prompt record layout (a list, for compact state): sigma count, Welford mean and M2; length count and mean;
# decayed sigma weight and sum; decayed successes and failures (pass rate).
_SIG_N, _SIG_MEAN, _SIG_M2, _LEN_N, _LEN_MEAN, _SIG_W, _SIG_S, _SUCC, _FAIL = range(9)
_RECORD = (0, 0.0, 0.0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
SCORE_SIGNALS = ("grad_trace", "pass_rate")


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
        signal: str = "pass_rate",
        pseudo_count: float = 1.0,
        decay: float = 0.8,
        prior_strength: float = 0.5,
        length_scale: bool = False,
    ):
        if not (default_length > 0 and math.isfinite(default_length)):
            raise ValueError(f"default_length must be a finite positive number, got {default_length!r}")
        if not (sigma_min >= 0 and math.isfinite(sigma_min)):
            raise ValueError(f"sigma_min must be finite and >= 0, got {sigma_min!r}")
        require_positive_ints(
            k_warmup=k_warmup, max_prompts=max_prompts, length_window=length_window, feature_window=feature_window
        )
        if signal not in SCORE_SIGNALS:
            raise ValueError(f"signal must be one of {SCORE_SIGNALS}, got {signal!r}")
        if not (isinstance(pseudo_count, int | float) and math.isfinite(pseudo_count) and pseudo_count >= 0):
            raise ValueError(f"pseudo_count must be a finite number >= 0, got {pseudo_count!r}")
        for name, value in (("decay", decay), ("ridge_decay", ridge_decay)):
            if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if not (isinstance(prior_strength, int | float) and math.isfinite(prior_strength) and prior_strength > 0):
            raise ValueError(f"prior_strength must be a finite number > 0, got {prior_strength!r}")
        if not isinstance(length_scale, bool):
            raise ValueError(f"length_scale must be true or false, got {length_scale!r}")
        self.signal, self.pseudo_count, self.decay = signal, float(pseudo_count), float(decay)
        self.prior_strength, self.length_scale = float(prior_strength), length_scale
        self._pass = [0.0, 0.0]  # population successes and failures (decayed per update), the prior's centre
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
        lengths = np.full(m, cold_length)
        cold = np.ones(m, dtype=bool)
        records = [self._prompts.get(str(pid)) for pid in prompt_ids]
        for i, rec in enumerate(records):
            if rec is not None and rec[_LEN_N] > 0:
                lengths[i] = rec[_LEN_MEAN]
        if self.signal == "pass_rate":
            succ = np.array([0.0 if r is None else r[_SUCC] for r in records])
            fail = np.array([0.0 if r is None else r[_FAIL] for r in records])
            cold = (succ + fail) == 0
            scores = self._pass_rate_uncertainty(succ, fail)
            if self.length_scale:
                scores = scores * lengths
            return SurrogatePrediction(scores=np.maximum(self.sigma_min, scores), lengths=lengths, cold=cold)
        scores = ridge.copy()
        kappa = self.pseudo_count
        for i, rec in enumerate(records):
            if rec is not None and rec[_SIG_N] >= self.k_warmup:
                scores[i] = max(self.sigma_min, (kappa * ridge[i] + rec[_SIG_S]) / (kappa + rec[_SIG_W]))
                cold[i] = False
        return SurrogatePrediction(scores=scores, lengths=lengths, cold=cold)

    def pass_rate(self, prompt_ids: Sequence[str]) -> np.ndarray:
        """Posterior mean pass rate of each prompt (the population's for an unseen one)."""
        records = [self._prompts.get(str(pid)) for pid in prompt_ids]
        succ = np.array([0.0 if r is None else r[_SUCC] for r in records])
        fail = np.array([0.0 if r is None else r[_FAIL] for r in records])
        a, b = self._beta(succ, fail)
        return a / (a + b)

    def _beta(self, succ: np.ndarray, fail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total = self._pass[0] + self._pass[1]
        centre = (self._pass[0] + 0.5) / (total + 1.0)  # population pass rate, Jeffreys-smoothed
        k = self.prior_strength
        return k * centre + succ, k * (1.0 - centre) + fail

    def _pass_rate_uncertainty(self, succ: np.ndarray, fail: np.ndarray) -> np.ndarray:
        """``E[p (1 - p)]`` under the Beta posterior."""
        a, b = self._beta(succ, fail)
        return a * b / ((a + b) * (a + b + 1.0))

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
        rewards: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Fold in one step's observations.

        Args:
            prompt_ids: the step's prompts (M,).
            sigmas: observed ``sigma_t`` per prompt, NaN where the group had fewer than two kept rollouts.
            kept_lengths: per prompt, the lengths of its kept (not aborted) rollouts.
            features: the prompts' cold-start features (M, d), NaN where unknown; used to fit the ridge.
            rewards: per prompt, the scores of all its rollouts (aborted ones as failures); they feed the pass-rate
                posterior (clipped to [0, 1]). ``None``: no pass-rate update.
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
        if rewards is not None and len(rewards) != len(prompt_ids):
            raise ValueError("rewards must have one entry per prompt")
        d = self.decay
        if rewards is not None:
            flat = np.clip(np.asarray([float(r) for group in rewards for r in group], dtype=np.float64), 0.0, 1.0)
            if flat.size:
                self._pass = [d * self._pass[0] + float(flat.sum()), d * self._pass[1] + float((1.0 - flat).sum())]
        for i, (pid, s, lengths) in enumerate(zip(prompt_ids, sig.tolist(), kept_lengths, strict=True)):
            rec = self._touch(str(pid))
            if math.isfinite(s):
                rec[_SIG_N] += 1
                delta = s - rec[_SIG_MEAN]
                rec[_SIG_MEAN] += delta / rec[_SIG_N]
                rec[_SIG_M2] += delta * (s - rec[_SIG_MEAN])
                rec[_SIG_W] = d * rec[_SIG_W] + 1.0
                rec[_SIG_S] = d * rec[_SIG_S] + s
            if rewards is not None and len(rewards[i]):
                r = np.clip(np.asarray(rewards[i], dtype=np.float64), 0.0, 1.0)
                rec[_SUCC] = d * rec[_SUCC] + float(r.sum())
                rec[_FAIL] = d * rec[_FAIL] + float((1.0 - r).sum())
            for length in lengths:
                rec[_LEN_N] += 1
                rec[_LEN_MEAN] += (float(length) - rec[_LEN_MEAN]) / rec[_LEN_N]
                self._recent_lengths.append(float(length))

    def _touch(self, pid: str) -> list[float]:
        rec = self._prompts.pop(pid, None)
        if rec is None:
            rec = list(_RECORD)
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
                "signal": self.signal,
                "pseudo_count": self.pseudo_count,
                "decay": self.decay,
                "prior_strength": self.prior_strength,
                "length_scale": self.length_scale,
            },
            "pass": list(self._pass),
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
        self._prompts = OrderedDict((str(pid), _upgrade(list(rec))) for pid, rec in state["prompts"])
        self._pass = [float(x) for x in state.get("pass", [0.0, 0.0])]
        while len(self._prompts) > self.max_prompts:
            self._prompts.popitem(last=False)
        self._recent_lengths.clear()
        self._recent_lengths.extend(float(x) for x in state["recent_lengths"])
        self._recent_features.clear()
        self._recent_features.extend(tuple(float(v) for v in f) for f in state["recent_features"])
        return changed


def _upgrade(rec: list) -> list:
    """A record of an older checkpoint (5 fields): its sigma mean as an undecayed sum, no pass-rate counts."""
    if len(rec) == len(_RECORD):
        return rec
    if len(rec) != 5:
        raise ValueError(f"surrogate record has {len(rec)} fields, expected {len(_RECORD)}")
    return [*rec, float(rec[_SIG_N]), float(rec[_SIG_N]) * float(rec[_SIG_MEAN]), 0.0, 0.0]


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


SIGMA_SOURCES = ("unweighted", "weighted")


def check_sigma_source(sigma_from: str) -> None:
    """Raise ``ValueError`` (message starting with the parameter's name) unless it is a known source."""
    if sigma_from not in SIGMA_SOURCES:
        raise ValueError(f"sigma_from must be one of {SIGMA_SOURCES}, got {sigma_from!r}")


def signal_advantages(
    weighted: np.ndarray, unweighted: np.ndarray | None, sigma_from: str = "unweighted"
) -> np.ndarray:
    """The per-rollout advantages ``sigma_t`` is computed from. ``"unweighted"`` (default): the GRPO advantage
    itself, so one ε-kept row (weight ``1 / (eps_abort p_pre)``) does not inflate its prompt's score for good;
    ``"weighted"``: ``w * A``, as the DUET reference. Falls back to the weighted ones when the unweighted are not
    given."""
    check_sigma_source(sigma_from)
    if sigma_from == "unweighted" and unweighted is not None:
        return np.asarray(unweighted, dtype=np.float64)
    return np.asarray(weighted, dtype=np.float64)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation, NaN when undefined (fewer than two points or zero variance)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])
