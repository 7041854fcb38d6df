"""``duet-verl simulate``: DUET's real controller on a synthetic prompt population, in seconds, on CPU.

Each policy trains its own copy of the same population for a few epochs. A step goes as the trainer's does
(``duet_verl/adapters/trainer.py``): :meth:`DuetController.plan` allocates rollouts and builds the stop rules,
synthetic rollouts are drawn, :meth:`DuetController.advantage` computes the weighted, abort-masked advantage
and :meth:`DuetController.observe` teaches the surrogate and the gates. GRPO policies draw ``round(b * G)``
rollouts per prompt and use the same advantage (weights 1, no stop rule).

The population: a share of prompts nobody solves (``p = 0``) or everybody solves (``p = 1``); the rest
("learnable") have a latent logit that rises as the policy learns, by a local step per rollout in a group with
non-zero advantage and a small global transfer. Each prompt has a typical length, a per-token entropy (its
``Σ log π`` per token) and an answer-marker habit; a correct rollout always writes its marker (at 60–95 % of its
length), a wrong one with the prompt's habit. Stop/abort is applied statistically with the controller's gates:
a marker seen after ``K1`` may stop the rollout shortly after (confidence 0.7, skipped with ``eps_len``); with no
marker by ``K2 + grace`` the rollout is aborted with probability ``1 - eps_abort`` (its answer lost), else
ε-kept (``eps_kept_correct_fraction``: how many of those still ended correct). A policy's pruning probe (ARRoL)
reads, at its detection length, synthetic features whose mean shifts with the rollout's success by ``probe_signal``
standard deviations (an assumption: how much a partial rollout's log-probs give away), and keeps or prunes the rollout
with the probe's own rule (:meth:`~duet_verl.core.probe.ProbeRule.keep_probability`). Each row is one column whose
mask value is the rollout's length, so ``max_row_share`` (the largest row's share of ``Σ|w·A|·len``, mean over
steps) is the trainer's.

Metrics per policy: ``gradient_rollout_fraction`` (rollouts in groups with a non-zero advantage), ``stuck_fraction``
(learnable prompts — ``0 < p < 1`` at the epoch's start — that got fewer than 2 rollouts in an epoch, epochs 2
onward), ``score_spearman`` (Spearman of the plan's ``ŝ`` with the true ``p (1 - p)``, epochs 2 onward),
``budget_use`` (generated tokens ÷ the step's token budget), ``ess_fraction`` (Kish ESS of the weights over
gradient-carrying rows ÷ their count) and ``final_pass_rate`` (mean true pass rate of the learnable prompts at
the end). Progress lines go to ``out`` (stdout from the CLI); the last line printed is one JSON object.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from duet_verl.core.advantage import duet_advantage
from duet_verl.core.controller import DuetController, StepObservation
from duet_verl.core.monitor import Outcome
from duet_verl.core.policies import POLICIES
from duet_verl.core.policies.duet import grpo_count
from duet_verl.core.probe import PROBE_FEATURES, ProbeRule
from duet_verl.core.protocol import RolloutReport
from duet_verl.core.settings import DuetSettings

__all__ = ["OLD_SETTINGS", "SimConfig", "main", "parse_policy", "run_policy", "simulate", "spearman"]

# The settings before issue 11 (the reference's surrogate, no measurement floor): the negative control.
OLD_SETTINGS: dict[str, Any] = {
    "surrogate": {"signal": "grad_trace", "sigma_from": "weighted", "pseudo_count": 0.0, "decay": 1.0},
    "explore": {"floor": 1},
    "gates": {"censored": False},
}


@dataclass(frozen=True)
class SimConfig:
    """Population and run sizes of a simulation."""

    prompts: int = 2048
    batch: int = 128
    epochs: int = 4
    group_size: int = 8
    cap: int = 1024
    seed: int = 0
    impossible: float = 0.15  # share of prompts with p = 0
    trivial: float = 0.30  # share with p = 1
    learn_rate: float = 0.12  # logit step of a prompt per rollout in a group with non-zero advantage
    transfer: float = 0.3  # logit drift of every learnable prompt per step, times the step's gradient fraction
    policies: tuple[str, ...] = ("grpo@1.0", "grpo@0.5", "duet@0.5", "duet-old@0.5")
    duet: dict[str, Any] = field(default_factory=dict)  # overrides of the default DUET settings (a duet: mapping)
    probe_signal: float = 1.0  # shift, in standard deviations, of a successful rollout's probe features


@dataclass
class _Population:
    logit: np.ndarray  # learnable prompts' latent logit (nan for fixed ones)
    fixed: np.ndarray  # nan, or the fixed pass rate 0/1
    length: np.ndarray
    entropy: np.ndarray
    marker_habit: np.ndarray

    @classmethod
    def draw(cls, cfg: SimConfig) -> _Population:
        rng = np.random.default_rng(cfg.seed)
        m = cfg.prompts
        u = rng.random(m)
        fixed = np.where(u < cfg.impossible, 0.0, np.where(u < cfg.impossible + cfg.trivial, 1.0, np.nan))
        logit = np.where(np.isnan(fixed), rng.normal(-0.8, 1.8, m), np.nan)
        length = np.clip(np.exp(rng.normal(math.log(0.3 * cfg.cap), 0.5, m)), 32, cfg.cap)
        return cls(logit, fixed, length, rng.uniform(0.2, 1.2, m), rng.beta(4.0, 1.0, m))

    def pass_rate(self, idx: np.ndarray | None = None) -> np.ndarray:
        sl = slice(None) if idx is None else idx
        p = 1.0 / (1.0 + np.exp(-self.logit[sl]))
        return np.where(np.isnan(self.fixed[sl]), p, self.fixed[sl])

    def learnable(self, idx: np.ndarray | None = None) -> np.ndarray:
        return np.isnan(self.fixed if idx is None else self.fixed[idx])


@dataclass
class _Rollouts:
    prompt: np.ndarray  # population index per rollout
    reward: np.ndarray
    length: np.ndarray
    outcome: list[Outcome]
    logprob_sum: np.ndarray
    probe_features: np.ndarray  # (N, F), NaN where no probe read the rollout
    probe_score: np.ndarray  # (N,), NaN where no probe read the rollout


_PROBE_DIRECTION = np.array([1.0, 0.5, 0.5, 1.0])  # how the success shift spreads over PROBE_FEATURES


def _draw_rollouts(
    pop: _Population,
    idx: np.ndarray,
    n: np.ndarray,
    rng: np.random.Generator,
    ctl: DuetController | None,
    cap: int,
    probes: list[ProbeRule | None] | None = None,
    probe_signal: float = 1.0,
) -> _Rollouts:
    prompt = np.repeat(idx, n)
    size = prompt.size
    correct = rng.random(size) < pop.pass_rate(prompt)
    natural = pop.length[prompt] * np.exp(rng.normal(0.0, 0.3, size)) * np.where(correct, 0.85, 1.0)
    natural = np.clip(np.rint(natural), 1, cap)
    marker = correct | (rng.random(size) < pop.marker_habit[prompt])
    marker_pos = np.where(marker, natural * rng.uniform(0.6, 0.95, size), np.inf)
    length = natural.copy()
    outcome = np.where(natural >= cap, Outcome.LENGTH_CAP.value, Outcome.NATURAL_EOS.value).astype(object)
    reward = correct.astype(np.float64)
    features = np.full((size, len(PROBE_FEATURES)), np.nan)
    score = np.full(size, np.nan)
    if probes is not None:
        for k, rule in enumerate(np.repeat(np.array(probes, dtype=object), n)):
            if rule is None or natural[k] < rule.at:
                continue
            shift = (1.0 if correct[k] else -1.0) * probe_signal / 2.0
            features[k] = rng.normal(0.0, 1.0, len(PROBE_FEATURES)) + shift * _PROBE_DIRECTION
            score[k], keep = rule.keep_probability(features[k])
            if rng.random() >= keep:
                outcome[k], length[k], reward[k] = Outcome.PRUNED.value, rule.at, 0.0
    if ctl is not None and ctl.monitors and ctl.policy.stop_abort:
        stop = ctl.settings.stop
        k1, k2 = ctl.gates.k1, ctl.gates.k2
        deadline = k2 + stop.grace
        late = (marker_pos > deadline) & (natural > deadline)  # no marker by K2 + grace: the abort lottery
        kept = rng.random(size) < stop.eps_abort
        aborted = late & ~kept
        outcome[late & kept] = Outcome.EPS_KEPT.value
        outcome[aborted] = Outcome.ABORTED.value
        length[aborted] = deadline
        reward[aborted] = 0.0
        seen = np.maximum(marker_pos, max(k1, stop.min_tokens))
        stop_at = np.rint(seen + rng.uniform(5, 40, size))
        stops = ~late & np.isfinite(marker_pos) & (stop_at < natural) & (rng.random(size) < 0.7 * (1.0 - stop.eps_len))
        outcome[stops] = Outcome.STOPPED_AFTER_MARKER.value
        length[stops] = stop_at[stops]
    logprob_sum = -pop.entropy[prompt] * length * np.exp(rng.normal(0.0, 0.1, size))
    return _Rollouts(prompt, reward, length, [Outcome(o) for o in outcome], logprob_sum, features, score)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (scipy; ties get their mean rank); NaN when undefined (a constant side)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def parse_policy(policy: str) -> tuple[str, float]:
    """``"vip@0.5"`` → ``("vip", 0.5)``: ``grpo``, ``duet-old`` or any ``duet.policy`` name, at a budget in (0, 1]."""
    method, _, budget = policy.partition("@")
    methods = ("grpo", "duet-old", *POLICIES)
    if method not in methods or not budget:
        raise ValueError(f"policy must be METHOD@B with METHOD one of {', '.join(methods)}, got {policy!r}")
    b = float(budget)
    if not 0.0 < b <= 1.0:
        raise ValueError(f"budget of {policy!r} must be in (0, 1]")
    return method, b


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def run_policy(policy: str, cfg: SimConfig, out=sys.stderr) -> dict[str, float]:
    """Train one policy on a fresh copy of the population; returns its metrics."""
    method, budget = parse_policy(policy)
    pop = _Population.draw(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    ctl = None
    if method != "grpo":
        overrides = _merge(OLD_SETTINGS, {}) if method == "duet-old" else _merge(cfg.duet, {"policy": method})
        settings = DuetSettings.from_mapping(_merge(overrides, {"budget": budget}))
        ctl = DuetController(settings, group_size=cfg.group_size, response_cap=cfg.cap)
    grpo_n = grpo_count(budget, cfg.group_size)
    totals = {"rollouts": 0.0, "gradient_rollouts": 0.0, "tokens": 0.0}
    stuck, rhos, use, ess, aborted, pruned, eps_correct, share = [], [], [], [], [], [], [], []
    step = 0
    for epoch in range(cfg.epochs):
        order = np.random.default_rng(cfg.seed + 100 + epoch).permutation(cfg.prompts)
        learnable_start = pop.learnable() & (pop.pass_rate() > 0) & (pop.pass_rate() < 1)
        most = np.zeros(cfg.prompts, dtype=np.int64)
        for start in range(0, cfg.prompts - cfg.batch + 1, cfg.batch):
            step += 1
            idx = order[start : start + cfg.batch]
            ids = [f"q{i}" for i in idx]
            if ctl is not None:
                plan = ctl.plan(ids, step)
                n, p_pre = plan.n, plan.p_pre
                if epoch > 0 and ctl.policy.name == "duet":  # ŝ is the DUET surrogate's; other policies ignore it
                    truth = pop.pass_rate(idx) * (1.0 - pop.pass_rate(idx))
                    rho = spearman(plan.scores, truth)
                    if math.isfinite(rho):
                        rhos.append(rho)
            else:
                n, p_pre = np.full(idx.size, grpo_n), np.ones(idx.size)
            np.maximum.at(most, idx, n)
            probes = [rule.monitor.probe if rule else None for rule in plan.stop_rules] if ctl is not None else None
            ro = _draw_rollouts(pop, idx, n, rng, ctl, cfg.cap, probes, cfg.probe_signal)
            rows = ro.prompt.size
            # one column per row: the reward, and a "mask" holding the row's length (its sum, which is all the
            # advantage reads of it besides masking: the scalar advantages and weights are the trainer's)
            rewards = torch.as_tensor(ro.reward).view(-1, 1)
            mask = torch.as_tensor(ro.length, dtype=torch.float64).view(-1, 1)
            gids = [f"q{i}" for i in ro.prompt]
            if ctl is not None:
                reports = [
                    RolloutReport(
                        o,
                        length=int(x),
                        probe_features=None if np.isnan(s) else f.tolist(),
                        probe_score=None if np.isnan(s) else float(s),
                    )
                    for o, x, f, s in zip(ro.outcome, ro.length, ro.probe_features, ro.probe_score, strict=True)
                ]
                adv = ctl.advantage(
                    rewards,
                    mask,
                    gids,
                    reports,
                    torch.zeros(rows, dtype=torch.bool),
                    p_pre=torch.as_tensor(np.repeat(p_pre, n)),
                )
                metrics = ctl.observe(
                    StepObservation(
                        gids,
                        ro.length,
                        reports,
                        adv.scalar_advantages.numpy(),
                        ro.logprob_sum,
                        unweighted_advantages=adv.unweighted_advantages.numpy(),
                        rewards=adv.scores.numpy(),
                    )
                )
                use.append(metrics["duet/tokens_vs_budget"])
                aborted.append(metrics["duet/rate_aborted"])
                pruned.append(metrics["duet/rate_pruned"])
                if "duet/eps_kept_correct_fraction" in metrics:
                    eps_correct.append(metrics["duet/eps_kept_correct_fraction"])
                if metrics.get("duet/gradient_rows", 0.0) > 0:
                    ess.append(metrics["duet/ess_fraction"])
                    share.append(metrics["duet/max_row_share"])
            else:
                adv = duet_advantage(rewards, mask, gids)
            carrying = adv.scalar_advantages.numpy() != 0
            group_has = np.zeros(cfg.prompts, dtype=bool)
            group_has[ro.prompt[carrying]] = True
            in_gradient_group = group_has[ro.prompt] & np.array([o is not Outcome.PRUNED for o in ro.outcome])
            totals["rollouts"] += rows
            totals["gradient_rollouts"] += float(in_gradient_group.sum())
            totals["tokens"] += float(ro.length.sum())
            # learning: each rollout in a group with signal moves its prompt; all prompts drift a little
            counts = np.bincount(ro.prompt[in_gradient_group], minlength=cfg.prompts).astype(np.float64)
            learn = pop.learnable()
            pop.logit[learn] += cfg.learn_rate * counts[learn] / cfg.group_size
            pop.logit[learn] += cfg.transfer * float(in_gradient_group.mean()) / (cfg.prompts / cfg.batch)
        if epoch > 0 and learnable_start.any():
            stuck.append(float(np.mean(most[learnable_start] < 2)))
        print(
            f"[simulate] {policy}: epoch {epoch + 1}/{cfg.epochs}, "
            f"gradient rollouts {totals['gradient_rollouts'] / max(totals['rollouts'], 1):.3f}, "
            f"learnable pass rate {float(pop.pass_rate()[pop.learnable()].mean()):.3f}",
            file=out,
            flush=True,
        )
    return {
        "gradient_rollout_fraction": totals["gradient_rollouts"] / max(totals["rollouts"], 1.0),
        "stuck_fraction": float(np.mean(stuck)) if stuck else float("nan"),
        "score_spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "budget_use": float(np.mean(use)) if use else float("nan"),
        "ess_fraction": float(np.mean(ess)) if ess else float("nan"),
        "aborted_fraction": float(np.mean(aborted)) if aborted else float("nan"),
        "pruned_fraction": float(np.mean(pruned)) if pruned else float("nan"),
        "max_row_share": float(np.mean(share)) if share else float("nan"),
        "eps_kept_correct_fraction": float(np.mean(eps_correct)) if eps_correct else float("nan"),
        "k2_final": float(ctl.gates.k2) if ctl is not None else float("nan"),
        "rollouts": totals["rollouts"],
        "tokens": totals["tokens"],
        "final_pass_rate": float(pop.pass_rate()[pop.learnable()].mean()),
    }


def simulate(cfg: SimConfig, out=sys.stderr) -> dict[str, Any]:
    """Run every policy of ``cfg``; the headline keys are DUET@0.5's (default settings) against GRPO@1.0."""
    for policy in cfg.policies:
        parse_policy(policy)
    results: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    for policy in cfg.policies:
        results[policy] = run_policy(policy, cfg, out)
    summary: dict[str, Any] = {}
    duet, grpo, old = results.get("duet@0.5"), results.get("grpo@1.0"), results.get("duet-old@0.5")
    if duet is not None:
        summary.update(
            {
                "stuck_fraction": _round(duet["stuck_fraction"]),
                "score_spearman": _round(duet["score_spearman"]),
                "budget_use": _round(duet["budget_use"]),
                "ess_fraction": _round(duet["ess_fraction"]),
                "max_row_share": _round(duet["max_row_share"]),
                "eps_kept_correct_fraction": _round(duet["eps_kept_correct_fraction"]),
            }
        )
        if grpo is not None:
            summary["gradient_rollout_ratio"] = _round(
                duet["gradient_rollout_fraction"] / grpo["gradient_rollout_fraction"]
            )
            summary["token_ratio_vs_grpo"] = _round(duet["tokens"] / grpo["tokens"])
    if old is not None:
        summary["old_stuck_fraction"] = _round(old["stuck_fraction"])
        summary["old_score_spearman"] = _round(old["score_spearman"])
        if grpo is not None:
            summary["old_gradient_rollout_ratio"] = _round(
                old["gradient_rollout_fraction"] / grpo["gradient_rollout_fraction"]
            )
    if grpo is not None:  # every policy side by side against GRPO@1.0
        for result in results.values():
            result["gradient_rollout_ratio"] = result["gradient_rollout_fraction"] / grpo["gradient_rollout_fraction"]
            result["token_ratio_vs_grpo"] = result["tokens"] / grpo["tokens"]
    summary["policies"] = {p: {k: _round(v) for k, v in r.items()} for p, r in results.items()}
    summary["seconds"] = _round(time.perf_counter() - start)
    return summary


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(float(x), 4)


def main(cfg: SimConfig) -> int:
    """Print progress, then the summary as the last line (JSON)."""
    print(json.dumps(simulate(cfg, out=sys.stdout), sort_keys=True), flush=True)
    return 0
