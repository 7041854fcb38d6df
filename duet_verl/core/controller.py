"""The per-step DUET loop without any framework: plan a batch before rollout, learn from it afterwards.

:class:`DuetController` owns the surrogate and the K1/K2 gates. ``plan`` turns a batch of prompt ids
(and optional cold-start features) into rollout counts, propensities and per-prompt stop rules;
``observe`` folds the step's rollouts back in and returns ``duet/*`` metrics. Its ``state_dict`` is
all a checkpoint needs to continue identically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from duet_verl.core.allocator import Allocation, allocate_rollouts, token_budget
from duet_verl.core.gates import GateEstimator, stop_thresholds
from duet_verl.core.monitor import Outcome, StopRuleConfig
from duet_verl.core.rng import rollout_seed
from duet_verl.core.settings import DuetSettings
from duet_verl.core.surrogate import PromptSurrogate, group_signal_std, pearson

__all__ = ["DuetController", "StepObservation", "StepPlan", "rollout_stop_rule"]


@dataclass(frozen=True)
class StepPlan:
    """What the trainer attaches to a batch before rollout."""

    step: int
    prompt_ids: list[str]
    allocation: Allocation
    scores: np.ndarray
    lengths: np.ndarray
    cold: np.ndarray
    thresholds: np.ndarray
    stop_rules: list[dict[str, Any] | None]  # per prompt; None when stopping is disabled

    @property
    def n(self) -> np.ndarray:
        """Rollouts per prompt."""
        return self.allocation.n

    @property
    def p_pre(self) -> np.ndarray:
        """Pre-rollout propensity per prompt."""
        return self.allocation.p_pre

    def metrics(self) -> dict[str, float]:
        """``duet/*`` metrics known before rollout."""
        n = self.allocation.n
        return {
            "duet/n_total": float(n.sum()),
            "duet/n_min": float(n.min()),
            "duet/n_mean": float(n.mean()),
            "duet/n_max": float(n.max()),
            "duet/lambda": self.allocation.lam,
            "duet/budget_tokens": self.allocation.budget,
            "duet/planned_tokens": self.allocation.spent,
            "duet/budget_unused_fraction": self.allocation.budget_error,
            "duet/frac_n_at_min": self.allocation.frac_at_min,
            "duet/frac_n_at_max": self.allocation.frac_at_max,
            "duet/cold_prompt_fraction": float(self.cold.mean()),
            "duet/score_mean": float(self.scores.mean()),
        }


@dataclass(frozen=True)
class StepObservation:
    """One step's rollouts, flattened (one entry per rollout; padding rows already removed)."""

    prompt_ids: Sequence[str]
    response_lengths: np.ndarray
    outcomes: Sequence[str]
    scalar_advantages: np.ndarray  # weighted, token-mean advantage per rollout
    seq_logprob_sums: np.ndarray  # sum_t log pi_old(y_t) per rollout
    features: dict[str, np.ndarray] | None = None  # prompt id -> cold-start feature vector


def rollout_stop_rule(prompt_rule: dict[str, Any], rollout_id: str) -> dict[str, Any]:
    """Complete a prompt-level stop rule into one rollout's ``StopRuleConfig`` dict (adds its seed)."""
    rule = dict(prompt_rule)
    rule["seed"] = rollout_seed(rule.pop("run_seed"), rule.pop("step"), rollout_id)
    return rule


class DuetController:
    """Plans each batch (allocation + stop rules) and learns from its rollouts."""

    def __init__(self, settings: DuetSettings, group_size: int, response_cap: int, num_features: int = 1):
        self.settings = settings.validate(group_size)
        self.group_size, self.response_cap = group_size, response_cap
        sur = settings.surrogate
        kwargs = dict(
            default_length=float(response_cap),
            sigma_min=sur.sigma_min,
            k_warmup=sur.k_warmup,
            max_prompts=sur.max_prompts,
            length_window=sur.length_window,
            ridge_l2=sur.ridge_l2,
            ridge_decay=sur.ridge_decay,
        )
        if sur.ridge_file:
            self.surrogate = PromptSurrogate.from_ridge_file(sur.ridge_file, **kwargs)
        else:
            self.surrogate = PromptSurrogate(num_features=num_features, **kwargs)
        self.gates = GateEstimator(cap=response_cap, **asdict(settings.gates))
        self._last_scores: dict[str, float] = {}

    @property
    def num_features(self) -> int:
        """Dimension of the cold-start feature vector."""
        return self.surrogate.ridge.num_features

    def plan(self, prompt_ids: Sequence[Any], step: int, features: np.ndarray | None = None) -> StepPlan:
        """Allocate rollouts for a batch and build each prompt's stop rule."""
        ids = [str(p) for p in prompt_ids]
        pred = self.surrogate.predict(ids, features)
        s = self.settings
        budget = token_budget(pred.lengths, self.group_size, s.budget)
        alloc = allocate_rollouts(pred.scores, pred.lengths, budget, s.n_min, s.n_max, s.eps_pre, s.cap_propensity)
        stop = s.stop
        thresholds = stop_thresholds(
            pred.scores, pred.lengths, stop.threshold_mode, stop.threshold_low, stop.threshold_high
        )
        rules: list[dict[str, Any] | None] = [None] * len(ids)
        if stop.enable:
            template = StopRuleConfig(
                k1=self.gates.k1, k2=self.gates.k2, threshold=0.5, seed=0, **stop.rule_kwargs()
            ).to_dict()
            del template["seed"]
            rules = [{**template, "threshold": float(t), "run_seed": s.seed, "step": int(step)} for t in thresholds]
        self._last_scores = dict(zip(ids, pred.scores.tolist(), strict=True))
        return StepPlan(step, ids, alloc, pred.scores, pred.lengths, pred.cold, thresholds, rules)

    def observe(self, obs: StepObservation) -> dict[str, float]:
        """Update the surrogate and the gates from a step's rollouts; returns ``duet/*`` metrics."""
        ids = np.asarray([str(p) for p in obs.prompt_ids], dtype=object)
        lengths = np.asarray(obs.response_lengths, dtype=np.float64)
        outcomes = np.asarray(list(obs.outcomes), dtype=object)
        kept = outcomes != Outcome.ABORTED.value
        sigmas = group_signal_std(obs.scalar_advantages, obs.seq_logprob_sums, ids, kept)
        unique = list(dict.fromkeys(ids.tolist()))
        kept_lengths = {pid: [] for pid in unique}
        for pid, length in zip(ids[kept].tolist(), lengths[kept].tolist(), strict=True):
            kept_lengths[pid].append(length)
        feats = None
        if obs.features is not None:
            feats = np.array([obs.features.get(pid, np.full(self.num_features, np.nan)) for pid in unique], dtype=float)
        sigma_arr = np.array([sigmas.get(pid, np.nan) for pid in unique])
        predicted = np.array([self._last_scores.get(pid, np.nan) for pid in unique])
        self.surrogate.update(unique, sigma_arr, [kept_lengths[p] for p in unique], features=feats)
        self.gates.observe(lengths[kept])
        gates_updated = self.gates.step()
        both = np.isfinite(sigma_arr) & np.isfinite(predicted)
        metrics = {
            "duet/tokens_generated": float(lengths.sum()),
            "duet/rollouts": float(lengths.size),
            "duet/surrogate_calibration": pearson(predicted[both], sigma_arr[both]),
            "duet/observed_sigma_mean": float(np.nanmean(sigma_arr)) if np.isfinite(sigma_arr).any() else float("nan"),
            "duet/k1": float(self.gates.k1),
            "duet/k2": float(self.gates.k2),
            "duet/gates_updated": float(gates_updated),
            "duet/tracked_prompts": float(len(self.surrogate)),
        }
        for outcome in Outcome:
            if outcome is not Outcome.RUNNING:
                metrics[f"duet/rate_{outcome.value}"] = (
                    float(np.mean(outcomes == outcome.value)) if outcomes.size else 0.0
                )
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain Python)."""
        return {"version": 1, "surrogate": self.surrogate.state_dict(), "gates": self.gates.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported DUET state version {state.get('version')!r}")
        self.surrogate.load_state_dict(state["surrogate"])
        self.gates.load_state_dict(state["gates"])
