"""ARRoL (Xu et al., "Prune as You Generate: Online Rollout Pruning for Faster and Better RLVR", arXiv 2603.24840):
score each rollout after its first tokens with a quality head trained online, and prune during generation so that
about a share ``keep`` of each group survives and the survivors are balanced, a share ``target`` of them correct.

What this follows from the paper: pruning inside the rollout engine at a detection length (512 tokens in the paper's
runs), a lightweight head trained on the fly on partial rollouts labelled by their final reward, a keep ratio of 0.5
and a target positive ratio of 0.5, a warm-up that trains the head before it prunes, and pruned rollouts removed from
the loss and from their group's advantage (the survivors are re-batched).

Reconstructed here (the paper's code is unreleased; documented in the README):

* **Where the decision is taken.** Each rollout is an independent request in verl's server, possibly on another
  replica than its siblings, so a group cannot be ranked as a whole. Instead each rollout is kept with a probability
  ``q·keep_correct + (1 − q)·keep_wrong`` (:func:`~duet_verl.core.probe.keep_probabilities`), where ``q`` is the
  head's success probability and the two keep probabilities come from the prompt's expected success rate: the share
  of survivors that are correct approaches ``target`` as the head gets sharper, and an uninformed head prunes at
  random, which leaves the ratio unchanged. The draw is reproducible per rollout (its monitor seed).
* **The prompt's expected success rate**: its last group's smoothed rate ``(S + ½)/(n + 1)``, pruned rollouts counted
  with the head's ``q``; a prompt never seen gets the last step's mean rate (0.5 before any step).
* **The head's inputs**: the paper's head reads the policy's hidden states, which a vLLM server does not hand out per
  request; this one reads statistics of the top-k log-probs the monitor already receives
  (:data:`~duet_verl.core.probe.PROBE_FEATURES`). It is scikit-learn's logistic regression on standardised features
  over the last ``buffer`` probed rollouts, refitted every step.
* **Exploration**: every keep probability is at least ``min_keep``, so the head keeps seeing both kinds of rollout
  wherever it prunes (pruning depends on the features and a coin only, so the survivors' labels stay unbiased given
  their features).
* **Budget**: ARRoL starts as many rollouts as the shared token budget pays once pruning's savings are counted: the
  budget is divided by the measured ratio of generated to planned tokens (a moving average), capped at ``n_max``
  rollouts per prompt; its importance weights are 1.
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np

from duet_verl.core.allocator import even_allocation
from duet_verl.core.checks import require_positive_ints, require_probabilities
from duet_verl.core.policies.base import AllocationRequest, BudgetPolicy, PolicyAllocation, RolloutFeedback
from duet_verl.core.policies.vip import smoothed_rate
from duet_verl.core.probe import PROBE_FEATURES, ProbeRule, keep_probabilities

__all__ = ["ArrolPolicy", "QualityHead"]

_MIN_SPEND = 0.2  # the spend ratio's floor: never start more than 5x the rollouts the budget pays unpruned


class QualityHead:
    """ARRoL's head: a logistic regression from probe features to success, exported as raw-feature weights so the
    server evaluates ``sigmoid(bias + w·x)`` without scikit-learn."""

    def __init__(self, regularization: float = 1.0, min_samples: int = 32):
        self.regularization, self.min_samples = float(regularization), int(min_samples)
        self.weights = (0.0,) * len(PROBE_FEATURES)
        self.bias = 0.0
        self.samples = 0  # rollouts it was last fitted on
        self.fitted = False  # its weights were fitted (on both outcomes); before that it knows only the base rate

    def fit(self, features: np.ndarray, labels: np.ndarray) -> None:
        """Refit on ``features`` (N, F) and 0/1 ``labels``. With fewer than ``min_samples`` rows or a single class the
        head only learns the base rate (zero weights) and stays unfitted."""
        x, y = np.asarray(features, dtype=np.float64), np.asarray(labels, dtype=np.float64) > 0.5
        if y.size == 0:
            return
        self.samples = int(y.size)
        if y.size < self.min_samples or y.all() or not y.any():
            rate = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
            self.weights, self.bias, self.fitted = (0.0,) * x.shape[1], math.log(rate / (1 - rate)), False
            return
        from sklearn.linear_model import LogisticRegression

        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale = np.where(scale > 1e-12, scale, 1.0)
        model = LogisticRegression(C=1.0 / self.regularization)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # lbfgs convergence notes on separable data
            model.fit((x - mean) / scale, y)
        w = model.coef_[0] / scale
        self.weights = tuple(float(v) for v in w)
        self.bias = float(model.intercept_[0] - w @ mean)
        self.fitted = True

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Success probability per row."""
        z = self.bias + np.asarray(features, dtype=np.float64) @ np.asarray(self.weights)
        return 1.0 / (1.0 + np.exp(-z))

    def state_dict(self) -> dict[str, Any]:
        return {"weights": list(self.weights), "bias": self.bias, "samples": self.samples, "fitted": self.fitted}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = tuple(float(w) for w in state["weights"])
        self.bias, self.samples, self.fitted = float(state["bias"]), int(state["samples"]), bool(state["fitted"])


class ArrolPolicy(BudgetPolicy):
    """ARRoL: balanced online pruning by a quality head, through the monitor's abort path; no DUET stop/abort."""

    name = "arrol"
    monitors = True
    stop_abort = False

    def __init__(
        self,
        detect_at: int = 512,
        keep: float = 0.5,
        target: float = 0.5,
        min_keep: float = 0.1,
        warmup_steps: int = 20,
        buffer: int = 4096,
        min_samples: int = 32,
        regularization: float = 1.0,
        spend_smoothing: float = 0.5,
        max_rollouts: int = 32,
    ):
        require_positive_ints(detect_at=detect_at, buffer=buffer, min_samples=min_samples, max_rollouts=max_rollouts)
        require_probabilities(keep=keep, target=target, min_keep=min_keep, spend_smoothing=spend_smoothing)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
        if not (isinstance(regularization, int | float) and regularization > 0):
            raise ValueError(f"regularization must be > 0, got {regularization!r}")
        if min_samples > buffer:  # the head never sees more than `buffer` rollouts: it would never prune
            raise ValueError(f"min_samples ({min_samples}) must not exceed buffer ({buffer})")
        self.detect_at, self.keep, self.target, self.min_keep = detect_at, float(keep), float(target), float(min_keep)
        self.warmup_steps, self.spend_smoothing, self.max_rollouts = warmup_steps, float(spend_smoothing), max_rollouts
        self.head = QualityHead(regularization, min_samples)
        self.examples: deque[tuple[list[float], float]] = deque(maxlen=buffer)
        self.rates: dict[str, float] = {}  # prompt -> expected success rate from its last group
        self.mean_rate = 0.5  # the last step's mean, for prompts never seen
        self.spend_ratio = 1.0  # generated ÷ planned tokens (moving average): what pruning saves
        self.steps_observed = 0

    @property
    def pruning(self) -> bool:
        """Whether this step's probes may prune: after the warm-up, once the head has seen ``min_samples`` probed
        rollouts (a head that has seen one outcome only knows the base rate, and prunes at random)."""
        return self.steps_observed >= self.warmup_steps and self.head.samples >= self.head.min_samples

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        everyone = np.ones(len(request.prompt_ids), dtype=bool)
        started = request.budget / (self.spend_ratio if self.pruning else 1.0)  # tokens if nothing were pruned
        alloc = even_allocation(request.lengths, started, everyone, self.max_rollouts)
        # reported against the real budget: the plan (unpruned) exceeds it by what pruning is expected to save
        alloc = replace(alloc, budget=request.budget, budget_error=(request.budget - alloc.spent) / request.budget)
        probes = [self.probe(pid) for pid in request.prompt_ids]
        metrics = {
            "duet/arrol_pruning": float(self.pruning),
            "duet/arrol_spend_ratio": self.spend_ratio,
            "duet/arrol_mean_keep": float(np.mean([(p.keep_correct + p.keep_wrong) / 2 for p in probes])),
        }
        return PolicyAllocation(alloc, probes=probes, metrics=metrics)

    def probe(self, prompt_id: str) -> ProbeRule:
        """The prompt's probe: the head and its keep probabilities (keep everything until pruning starts)."""
        keep_correct = keep_wrong = 1.0
        if self.pruning:
            success = self.rates.get(prompt_id, self.mean_rate)
            keep_correct, keep_wrong = keep_probabilities(success, self.keep, self.target, self.min_keep)
        return ProbeRule(self.detect_at, self.head.weights, self.head.bias, keep_correct, keep_wrong)

    def observe_rollouts(self, feedback: RolloutFeedback, step: int) -> dict[str, float]:
        """Score the head on the step's probed rollouts, add them to its examples and refit; update each prompt's
        expected success rate (a pruned rollout counts with its ``q``) and the spend ratio."""
        was_pruning = self.pruning
        rewards, pruned = np.asarray(feedback.rewards, dtype=np.float64), np.asarray(feedback.pruned, dtype=bool)
        scores = np.asarray(feedback.probe_scores, dtype=np.float64)
        features = np.asarray(feedback.probe_features, dtype=np.float64).reshape(len(rewards), len(PROBE_FEATURES))
        probed = np.isfinite(scores)
        labelled = probed & ~pruned & np.isfinite(rewards)
        metrics: dict[str, float] = {
            "duet/arrol_probed_fraction": float(probed.mean()) if probed.size else 0.0,
            "duet/arrol_pruned_fraction": float(pruned[probed].mean()) if probed.any() else 0.0,
        }
        if labelled.any():
            correct = rewards[labelled] > 0.5
            metrics["duet/arrol_head_accuracy"] = float(np.mean((scores[labelled] >= 0.5) == correct))
            metrics["duet/arrol_kept_positive_ratio"] = float(correct.mean())
        for row in np.flatnonzero(labelled):
            self.examples.append((features[row].tolist(), float(rewards[row] > 0.5)))
        if self.examples:
            x = np.array([e[0] for e in self.examples])
            self.head.fit(x, np.array([e[1] for e in self.examples]))
        outcome = np.where(pruned, scores, np.clip(np.nan_to_num(rewards), 0.0, 1.0))
        groups: dict[str, list[float]] = {}
        for pid, value in zip(feedback.prompt_ids, outcome.tolist(), strict=True):
            groups.setdefault(str(pid), []).append(value)
        for pid, values in groups.items():
            self.rates[pid] = smoothed_rate(values)
        if groups:
            self.mean_rate = float(np.mean([np.mean(v) for v in groups.values()]))
        if feedback.tokens_planned > 0 and was_pruning:
            ratio = max(_MIN_SPEND, min(1.0, feedback.tokens_generated / feedback.tokens_planned))
            self.spend_ratio += self.spend_smoothing * (ratio - self.spend_ratio)
        self.steps_observed += 1
        metrics["duet/arrol_head_fitted"] = float(self.head.fitted)
        metrics["duet/arrol_examples"] = float(len(self.examples))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": self.head.state_dict(),
            "examples": [list(e) for e in self.examples],
            "rates": dict(self.rates),
            "mean_rate": self.mean_rate,
            "spend_ratio": self.spend_ratio,
            "steps_observed": self.steps_observed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.examples.clear()
        self.examples.extend((list(map(float, f)), float(y)) for f, y in state["examples"])
        self.rates = {str(k): float(v) for k, v in state["rates"].items()}
        self.mean_rate, self.spend_ratio = float(state["mean_rate"]), float(state["spend_ratio"])
        self.steps_observed = int(state["steps_observed"])
