"""The per-step DUET loop without any framework: plan a batch before rollout, learn from it afterwards.

:class:`DuetController` owns the surrogate, the K1/K2 gates and the run's budget policy (``duet.policy``:
DUET or a baseline, ``core/policies``). ``plan`` turns a batch of prompt ids (and optional cold-start features) into
the policy's rollout counts and propensities under the shared token budget, and per-prompt stop rules;
``advantage`` weights and masks the step's GRPO advantage; ``observe`` folds the step's rollouts back in
and returns every ``duet/*`` metric of the step. Its ``state_dict`` is all a checkpoint needs to continue
identically; loading one restores learned state only (the current settings win).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from duet_verl.core.advantage import WeightedAdvantage, duet_advantage
from duet_verl.core.allocator import Allocation, token_budget
from duet_verl.core.gates import GateEstimator, stop_thresholds
from duet_verl.core.monitor import DROPPED_OUTCOMES, Outcome
from duet_verl.core.policies import AllocationRequest, RolloutFeedback, build_policy
from duet_verl.core.probe import PROBE_FEATURES
from duet_verl.core.protocol import PromptStopRule, RolloutReport
from duet_verl.core.settings import DuetSettings
from duet_verl.core.surrogate import PromptSurrogate, group_signal_std, pearson, signal_advantages

__all__ = ["IO_TIMING", "PLAN_TIMING", "UPDATE_TIMING", "DuetController", "StepObservation", "StepPlan"]

# DUET's own time in a training step, logged by the trainer beside verl's timing_s/* (the quickstart reports their
# share of timing_s/step), and the TransferQueue reads and writes of DUET's advantage stage, logged apart (verl's own
# advantage stage moves the same data: its timing_s/adv holds both)
PLAN_TIMING, UPDATE_TIMING, IO_TIMING = "timing_s/duet_plan", "timing_s/duet_update", "timing_s/duet_io"

logger = logging.getLogger(__name__)


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
    stop_rules: list[PromptStopRule | None]  # per prompt; None when stopping is disabled
    reprobed: np.ndarray | None = None  # bool (M,): the measurement floor bound and came from the re-probe draw
    floor_dropped: bool = False  # the budget could not give every drawn prompt the measurement floor
    policy_metrics: dict[str, float] = field(default_factory=dict)  # the budget policy's own plan metrics

    @property
    def monitored(self) -> bool:
        """Whether any prompt carries a stop rule (the stop/abort monitor runs during rollout)."""
        return any(rule is not None for rule in self.stop_rules)

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
            "duet/frac_n_ge_2": float(np.mean(n >= 2)),
            "duet/reprobed_fraction": float(self.reprobed.mean()) if self.reprobed is not None else 0.0,
            "duet/floor_dropped": float(self.floor_dropped),
            **self.policy_metrics,
        }


@dataclass(frozen=True)
class StepObservation:
    """One step's real rollouts (padding rows removed), one entry per rollout."""

    prompt_ids: Sequence[str]
    response_lengths: np.ndarray  # generated tokens (an appended end-of-turn token not counted)
    reports: Sequence[RolloutReport]
    scalar_advantages: np.ndarray  # weighted advantage w * A per rollout
    seq_logprob_sums: np.ndarray  # sum_t log pi_old(y_t) per rollout
    score_mismatch: int = 0  # rollouts whose DUET score differed from the trainer's own sequence score
    unweighted_advantages: np.ndarray | None = None  # A per rollout before the weight (sigma_t's default source)
    rewards: np.ndarray | None = None  # each rollout's score (the pass-rate signal); aborted rows count as failures


class DuetController:
    """Plans each batch (allocation + stop rules), computes its advantage, learns from its rollouts, and produces
    every ``duet/*`` metric of the step."""

    def __init__(self, settings: DuetSettings, group_size: int, response_cap: int, num_features: int = 1):
        self.settings = settings.validate(group_size)
        self.group_size, self.response_cap = group_size, response_cap
        sur = settings.surrogate
        kwargs = dict(default_length=float(response_cap), **sur.surrogate_kwargs())
        if sur.ridge_file:
            self.surrogate = PromptSurrogate.from_ridge_file(sur.ridge_file, **kwargs)
        else:
            self.surrogate = PromptSurrogate(num_features=num_features, **kwargs)
        self.gates = GateEstimator(cap=response_cap, **asdict(settings.gates))
        self.policy = build_policy(self.settings, group_size)
        self.last_plan: StepPlan | None = None
        self._features: dict[str, np.ndarray] = {}
        self._advantage_metrics: dict[str, float] = {}

    @property
    def monitors(self) -> bool:
        """Whether this run's rollouts carry stop rules: the policy runs the monitor (DUET's stop/abort, or a
        baseline's pruning probe) and ``duet.stop.enable``."""
        return self.policy.monitors and self.settings.stop.enable

    @property
    def num_features(self) -> int:
        """Dimension of the cold-start feature vector."""
        return self.surrogate.ridge.num_features

    def plan(self, prompt_ids: Sequence[Any], step: int, features: np.ndarray | None = None) -> StepPlan:
        """Allocate rollouts for a batch and build each prompt's stop rule; kept as :attr:`last_plan`."""
        ids = [str(p) for p in prompt_ids]
        pred = self.surrogate.predict(ids, features)
        s = self.settings
        budget = token_budget(pred.lengths, self.group_size, s.budget)
        request = AllocationRequest(ids, int(step), pred.scores, pred.lengths, budget, self.group_size, features)
        chosen = self.policy.allocate(request)
        stop = s.stop
        thresholds = stop_thresholds(
            pred.scores, pred.lengths, stop.threshold_mode, stop.threshold_low, stop.threshold_high
        )
        rules: list[PromptStopRule | None] = [None] * len(ids)
        if self.monitors:
            rules = [stop.prompt_rule(self.gates.k1, self.gates.k2, float(t), s.seed, int(step)) for t in thresholds]
            if chosen.probes is not None or not self.policy.stop_abort:
                probes = chosen.probes or [None] * len(ids)
                stop_abort = self.policy.stop_abort
                rules = [rule.with_probe(probe, stop_abort) for rule, probe in zip(rules, probes, strict=True)]
        if features is not None:
            self._features.update(zip(ids, np.asarray(features, dtype=np.float64), strict=True))
        self.last_plan = StepPlan(
            step,
            ids,
            chosen.allocation,
            pred.scores,
            pred.lengths,
            pred.cold,
            thresholds,
            rules,
            chosen.reprobed,
            chosen.floor_dropped,
            chosen.metrics,
        )
        return self.last_plan

    def advantage(
        self,
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        group_ids: Sequence[str],
        reports: Sequence[RolloutReport],
        padding: torch.Tensor,
        p_pre: torch.Tensor,
        norm_by_std: bool = True,
    ) -> WeightedAdvantage:
        """DUET's weighted, abort-masked GRPO advantage of a step (rows as verl's, padding rows flagged). A pruned
        rollout was never scored: it leaves its group's baseline as well as the loss, like padding."""
        outcomes = [r.outcome for r in reports]
        pruned = torch.tensor([o is Outcome.PRUNED for o in outcomes], dtype=torch.bool)
        weights = self.settings.weights
        out = duet_advantage(
            token_level_rewards,
            response_mask,
            group_ids,
            p_pre=p_pre,
            eps_kept=torch.tensor([o is Outcome.EPS_KEPT for o in outcomes], dtype=torch.bool),
            aborted=torch.tensor([o is Outcome.ABORTED for o in outcomes], dtype=torch.bool),
            padding=padding.to(torch.bool) | pruned,
            eps_abort=self.settings.stop.eps_abort,
            norm_by_std=norm_by_std,
            **asdict(weights),
        )
        self._advantage_metrics = {f"duet/{k}": v for k, v in out.metrics.items()}
        return out

    def observe(self, obs: StepObservation) -> dict[str, float]:
        """Update the surrogate and the gates from a step's rollouts; returns all of the step's ``duet/*`` metrics
        (the last plan's, the last advantage's, and what the rollouts show)."""
        ids = np.asarray([str(p) for p in obs.prompt_ids], dtype=object)
        lengths = np.asarray(obs.response_lengths, dtype=np.float64)
        outcomes = np.asarray([r.outcome.value for r in obs.reports], dtype=object)
        kept = ~np.isin(outcomes, [o.value for o in DROPPED_OUTCOMES])
        pruned = outcomes == Outcome.PRUNED.value
        advantages = signal_advantages(
            obs.scalar_advantages, obs.unweighted_advantages, self.settings.surrogate.sigma_from
        )
        sigmas = group_signal_std(advantages, obs.seq_logprob_sums, ids, kept)
        unique = list(dict.fromkeys(ids.tolist()))
        kept_lengths = {pid: [] for pid in unique}
        for pid, length in zip(ids[kept].tolist(), lengths[kept].tolist(), strict=True):
            kept_lengths[pid].append(length)
        rewards = None
        if obs.rewards is not None:
            scored = np.where(kept, np.asarray(obs.rewards, dtype=np.float64), 0.0)  # aborted: a failure
            by_prompt = {pid: [] for pid in unique}
            for pid, r, unscored in zip(ids.tolist(), scored.tolist(), pruned.tolist(), strict=True):
                if not unscored:  # a pruned rollout has no reward at all
                    by_prompt[pid].append(r)
            rewards = [by_prompt[p] for p in unique]
        missing = np.full(self.num_features, np.nan)
        feats = np.array([self._features.pop(pid, missing) for pid in unique], dtype=float)
        sigma_arr = np.array([sigmas.get(pid, np.nan) for pid in unique])
        planned = self.last_plan
        predicted_by_id = dict(zip(planned.prompt_ids, planned.scores.tolist(), strict=True)) if planned else {}
        predicted = np.array([predicted_by_id.get(pid, np.nan) for pid in unique])
        self.surrogate.update(unique, sigma_arr, [kept_lengths[p] for p in unique], features=feats, rewards=rewards)
        self.gates.observe(lengths, censored=~kept)
        gates_updated = self.gates.step()
        step = planned.step if planned else -1
        policy_metrics = self.policy.observe(unique, rewards, step) if rewards else {}
        if obs.rewards is not None and self.policy.reads_rollouts:
            policy_metrics.update(self.policy.observe_rollouts(self._feedback(obs, pruned), step))
        observed = sigma_arr  # what the score predicts: sigma_t, or for pass_rate the group's reward variance
        if self.settings.surrogate.signal == "pass_rate":
            observed = np.array(
                [float(np.var(np.clip(r, 0.0, 1.0))) if len(r) >= 2 else np.nan for r in rewards]
                if rewards is not None
                else np.full(len(unique), np.nan)
            )
        both = np.isfinite(observed) & np.isfinite(predicted)
        metrics = {**(planned.metrics() if planned else {}), **self._advantage_metrics, **policy_metrics}
        budget = metrics.get("duet/budget_tokens", float("nan"))
        metrics.update(
            {
                "duet/tokens_generated": float(lengths.sum()),
                "duet/tokens_vs_budget": float(lengths.sum()) / max(budget, 1.0),
                "duet/rollouts": float(lengths.size),
                "duet/score_mismatch": float(obs.score_mismatch),
                "duet/surrogate_calibration": pearson(predicted[both], observed[both]),
                "duet/observed_sigma_mean": (
                    float(np.nanmean(sigma_arr)) if np.isfinite(sigma_arr).any() else float("nan")
                ),
                "duet/k1": float(self.gates.k1),
                "duet/k2": float(self.gates.k2),
                "duet/gates_updated": float(gates_updated),
                "duet/tracked_prompts": float(len(self.surrogate)),
                "duet/measured_prompt_fraction": float(np.isfinite(sigma_arr).mean()) if unique else 0.0,
                "duet/gates_censored_fraction": self.gates.censored_fraction,
            }
        )
        for outcome in Outcome:
            if outcome is not Outcome.RUNNING:
                rate = float(np.mean(outcomes == outcome.value)) if outcomes.size else 0.0
                metrics[f"duet/rate_{outcome.value}"] = rate
        eps_kept = outcomes == Outcome.EPS_KEPT.value
        if obs.rewards is not None and eps_kept.any():
            # ε-kept rollouts that still ended correct: what the abort at K2 + grace would have thrown away
            metrics["duet/eps_kept_correct_fraction"] = float(np.mean(np.asarray(obs.rewards)[eps_kept] > 0))
        monitored = [r for r in obs.reports if r.monitored]
        if monitored:
            metrics["duet/monitor_ns_per_token"] = sum(r.monitor_ns for r in monitored) / max(lengths.sum(), 1.0)
            metrics["duet/abort_failed"] = float(sum(r.abort_failed for r in monitored))
            metrics["duet/rate_continued"] = float(np.mean([r.segments > 1 for r in monitored]))
        self._advantage_metrics = {}
        return metrics

    def _feedback(self, obs: StepObservation, pruned: np.ndarray) -> RolloutFeedback:
        """The step's single rollouts as :meth:`BudgetPolicy.observe_rollouts` reads them."""
        width = len(PROBE_FEATURES)
        features = np.array(
            [r.probe_features if r.probe_features is not None else [np.nan] * width for r in obs.reports],
            dtype=np.float64,
        ).reshape(len(obs.reports), width)
        return RolloutFeedback(
            prompt_ids=[str(p) for p in obs.prompt_ids],
            rewards=np.where(pruned, np.nan, np.asarray(obs.rewards, dtype=np.float64)),
            pruned=pruned,
            probe_scores=np.array([np.nan if r.probe_score is None else r.probe_score for r in obs.reports]),
            probe_features=features,
            tokens_generated=float(np.sum(obs.response_lengths)),
            tokens_planned=self.last_plan.allocation.spent if self.last_plan is not None else 0.0,
        )

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state (plain Python)."""
        return {
            "version": 1,
            "surrogate": self.surrogate.state_dict(),
            "gates": self.gates.state_dict(),
            "policy": {"name": self.policy.name, "state": self.policy.state_dict()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Restore the learned state of :meth:`state_dict` output; the current settings win. Returns (and logs)
        the surrogate settings that differ from the checkpoint's."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported DUET state version {state.get('version')!r}")
        changed = self.surrogate.load_state_dict(state["surrogate"])
        for name, (before, now) in changed.items():
            logger.warning(f"DUET resume: surrogate setting {name} was {before!r} in the checkpoint, now {now!r}")
        self.gates.load_state_dict(state["gates"])
        policy = state.get("policy", {"name": "duet", "state": {}})  # states before the policies were DUET's
        if policy["name"] == self.policy.name:
            self.policy.load_state_dict(policy["state"])
        else:
            logger.warning(
                f"DUET resume: the checkpoint's policy {policy['name']!r} is not this run's "
                f"{self.policy.name!r}; its state starts fresh"
            )
            changed = {**changed, "policy": (policy["name"], self.policy.name)}
        return changed
