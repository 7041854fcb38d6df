"""VIP (Nguyen et al., "Adaptive Rollout Allocation for Online RL with Verifiable Rewards", arXiv 2602.01601):
predict each prompt's success probability ``p`` with a Gaussian process on recent rollouts, then choose rollout counts
that minimise the gradient-variance proxy ``Σ p(1−p)/n_q`` under a hard budget, ``n_q`` in ``[n_lo, n_hi]``.

What this follows from the paper: a lightweight GP regression of success probabilities from recent rollouts and
prompt features; the variance ``p(1−p)`` of a prompt's Bernoulli reward as its weight; the convex program above;
bounds ``[4, 16]`` at ``G = 16`` (the paper's runs); no importance weights (propensity 1).

Reconstructed or adapted here (documented in the README):

* **GP inputs and targets.** Input ``x_q = [r_q, f_q]``: ``r_q`` the prompt's last observed smoothed success rate
  ``(S + ½)/(n + 1)`` (the mean over the window's observations for a prompt never seen), ``f_q`` its cold-start
  features (``duet.surrogate.feature_key``; a missing value is replaced by the mean of the values seen so far). Target:
  the logit of the smoothed rate the prompt's next group showed. The GP (scikit-learn's ``GaussianProcessRegressor``,
  constant × RBF with one length scale per input + white noise) is trained on the last ``window`` (256) observations
  each step; its hyper-parameters are re-optimised by maximum marginal likelihood, starting from the previous ones,
  at every fit while the window is filling and then every ``refit_every`` (10) fits, and kept in between (such a fit
  takes about 10 ms instead of 1–2 s on 2 CPU cores). ``p̂_q`` is the sigmoid of its posterior mean at ``x_q``.
* **Cold start.** With fewer than ``min_points`` observations no GP is fitted: ``p̂_q = r_q`` (0.5 in a fresh run, so
  the first allocation is uniform).
* **Budget in tokens.** The paper budgets rollouts; here the constraint is the shared token budget
  ``Σ n_q L̂_q ≤ B``. The program is the separable convex one DUET's allocator solves exactly in integers
  (:func:`~duet_verl.core.allocator.allocate_rollouts` with ``ŝ_q = sqrt(p̂_q(1 − p̂_q))`` and the ``sqrt`` cost, whose
  objective is ``Σ ŝ_q²/n_q``); a test checks it against scipy's solution of the continuous relaxation.
* **Bounds at other group sizes.** ``n_lo = max(n_min, min(round(¼·G), floor(b·G)))``, ``n_hi = max(n_lo, G)``:
  ``[4, 16]`` at ``G = 16``, ``[2, 8]`` at ``G = 8``; ``n_lo`` never exceeds what the budget can pay.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from duet_verl.core.allocator import allocate_rollouts, uniform_allocation
from duet_verl.core.checks import require_positive_ints
from duet_verl.core.policies.base import AllocationRequest, BudgetPolicy, PolicyAllocation

__all__ = ["VipPolicy", "smoothed_rate", "vip_bounds"]


def smoothed_rate(rewards: Sequence[float]) -> float:
    """``(S + ½)/(n + 1)`` of a group's rewards (clipped to [0, 1]): never exactly 0 or 1, so its logit is finite."""
    values = np.clip(np.asarray(rewards, dtype=np.float64), 0.0, 1.0)
    return float((values.sum() + 0.5) / (values.size + 1.0))


def vip_bounds(group_size: int, budget_fraction: float, n_min: int, min_fraction: float, max_fraction: float):
    """``(n_lo, n_hi)``: the paper's ``[4, 16]`` at ``G = 16`` as fractions of ``G``, ``n_lo`` within what the budget
    pays (``floor(b·G)``) and at least ``n_min``."""
    lo = max(int(n_min), min(round(min_fraction * group_size), math.floor(budget_fraction * group_size)))
    return lo, max(lo, round(max_fraction * group_size))


class VipPolicy(BudgetPolicy):
    """VIP: GP-predicted success probabilities, then ``min Σ p(1−p)/n`` under the token budget."""

    name = "vip"

    def __init__(
        self,
        min_fraction: float = 0.25,
        max_fraction: float = 1.0,
        window: int = 256,
        min_points: int = 16,
        refit_every: int = 10,
        n_lo: int = 4,
        n_hi: int = 16,
    ):
        for name, value in (("min_fraction", min_fraction), ("max_fraction", max_fraction)):
            if not (isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        if min_fraction > max_fraction:
            raise ValueError(f"min_fraction ({min_fraction}) must not exceed max_fraction ({max_fraction})")
        require_positive_ints(window=window, min_points=min_points, refit_every=refit_every, n_lo=n_lo, n_hi=n_hi)
        if min_points > window:
            raise ValueError(f"min_points ({min_points}) must not exceed window ({window})")
        if n_lo > n_hi:
            raise ValueError(f"n_lo ({n_lo}) must not exceed n_hi ({n_hi})")
        self.window, self.min_points, self.refit_every = window, min_points, refit_every
        self.n_lo, self.n_hi = n_lo, n_hi
        self.fits = 0  # GP fits so far (hyper-parameters are re-optimised every refit_every fits)
        self.last_rate: dict[str, float] = {}  # prompt -> its last group's smoothed success rate
        self.inputs: list[list[float]] = []  # the GP's training window: x ...
        self.targets: list[float] = []  # ... and logit of the next smoothed rate
        self.feature_sum: list[float] = []  # running sums of the finite feature values seen, per feature
        self.feature_count: list[int] = []
        self.theta: list[float] | None = None  # the kernel's fitted log-hyper-parameters (the next fit starts there)
        self._pending: dict[str, list[float]] = {}  # x of each prompt planned this step, until its rewards arrive

    def _inputs(self, prompt_ids: Sequence[str], features: np.ndarray | None) -> np.ndarray:
        """``x_q = [r_q, f_q]`` per prompt (see the module)."""
        seen = np.array(list(self.last_rate.values()), dtype=np.float64)
        default = float(seen.mean()) if seen.size else 0.5
        rates = np.array([self.last_rate.get(pid, default) for pid in prompt_ids], dtype=np.float64)
        if features is None:
            return rates[:, None]
        feats = np.asarray(features, dtype=np.float64).reshape(len(prompt_ids), -1)
        if not self.feature_sum:
            self.feature_sum, self.feature_count = [0.0] * feats.shape[1], [0] * feats.shape[1]
        for j in range(feats.shape[1]):
            finite = np.isfinite(feats[:, j])
            self.feature_sum[j] += float(feats[finite, j].sum())
            self.feature_count[j] += int(finite.sum())
            mean = self.feature_sum[j] / self.feature_count[j] if self.feature_count[j] else 0.0
            feats[~finite, j] = mean
        return np.column_stack([rates, feats])

    def predict(self, prompt_ids: Sequence[str], features: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
        """``(p̂ per prompt, whether the GP was used)``; also remembers each prompt's input for :meth:`observe`."""
        x = self._inputs(prompt_ids, features)
        self._pending.update({pid: row.tolist() for pid, row in zip(prompt_ids, x, strict=True)})
        rows = np.asarray(self.inputs, dtype=np.float64)
        if len(self.targets) < self.min_points or rows.shape[1] != x.shape[1]:
            return x[:, 0], False
        from sklearn.exceptions import ConvergenceWarning  # imported here: only VIP's fits need scikit-learn
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        dims = x.shape[1]
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * RBF(np.ones(dims), (1e-2, 1e2)) + WhiteKernel(0.1, (1e-4, 1e1))
        if self.theta is not None and len(self.theta) == kernel.theta.size:  # warm start: last step's fit
            kernel = kernel.clone_with_theta(np.asarray(self.theta, dtype=np.float64))
        filling = len(self.targets) < self.window  # early fits see few, often alike points: keep re-optimising
        refit = self.theta is None or filling or self.fits % self.refit_every == 0
        gp = GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, random_state=0, optimizer="fmin_l_bfgs_b" if refit else None
        )
        self.fits += 1
        with warnings.catch_warnings():  # a bound reached by the hyper-parameter fit is not an error here
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(rows, np.asarray(self.targets, dtype=np.float64))
        self.theta = gp.kernel_.theta.tolist()
        return 1.0 / (1.0 + np.exp(-gp.predict(x))), True

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        p, fitted = self.predict(request.prompt_ids, request.features)
        variance = p * (1.0 - p)
        lower_spend = float(np.full(len(p), self.n_lo) @ request.lengths)
        if lower_spend > request.budget:  # n_lo = b·G exactly, the budget off by the float rounding: n_lo each
            alloc = uniform_allocation(request.lengths, request.budget, self.n_lo, self.n_lo, self.n_hi)
        else:
            alloc = allocate_rollouts(
                np.sqrt(variance), request.lengths, request.budget, self.n_lo, self.n_hi, length_cost="sqrt"
            )
        alloc = replace(alloc, p_pre=np.ones_like(alloc.p_pre))  # VIP trains without importance weights
        metrics = {
            "duet/vip_p_mean": float(p.mean()),
            "duet/vip_variance_mean": float(variance.mean()),
            "duet/vip_gp_fitted": float(fitted),
            "duet/vip_gp_points": float(len(self.targets)),
        }
        return PolicyAllocation(alloc, metrics=metrics)

    def observe(self, prompt_ids: Sequence[str], rewards: Sequence[Sequence[float]], step: int) -> dict[str, float]:
        """Add each observed prompt's (input, next-rate) pair to the window and remember its rate."""
        for pid, group in zip(prompt_ids, rewards, strict=True):
            if not len(group):
                continue
            rate = smoothed_rate(group)
            x = self._pending.pop(pid, None)
            if x is not None:
                self.inputs.append(x)
                self.targets.append(math.log(rate / (1.0 - rate)))
            self.last_rate[pid] = rate
        del self.inputs[: -self.window], self.targets[: -self.window]
        self._pending.clear()
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_rate": dict(self.last_rate),
            "inputs": [list(x) for x in self.inputs],
            "targets": list(self.targets),
            "feature_sum": list(self.feature_sum),
            "feature_count": list(self.feature_count),
            "theta": None if self.theta is None else list(self.theta),
            "fits": self.fits,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_rate = {str(k): float(v) for k, v in state["last_rate"].items()}
        self.inputs = [[float(v) for v in x] for x in state["inputs"]]
        self.targets = [float(v) for v in state["targets"]]
        self.feature_sum = [float(v) for v in state["feature_sum"]]
        self.feature_count = [int(v) for v in state["feature_count"]]
        self.theta = None if state["theta"] is None else [float(v) for v in state["theta"]]
        self.fits = int(state["fits"])
        self._pending = {}
