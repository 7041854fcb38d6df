"""ARRoL (``duet.policy=arrol``): the in-server probe, the keep rule, and the policy through DUET's controller and the
real monitor state machine (plan → per-rollout rule → monitor → report → advantage/observe)."""

import json
import math

import numpy as np
import pytest
import torch

from duet_verl.core.controller import DuetController, StepObservation
from duet_verl.core.monitor import Action, Outcome, StopAbortMonitor, StopRuleConfig
from duet_verl.core.policies import AllocationRequest, RolloutFeedback
from duet_verl.core.policies.arrol import ArrolPolicy, QualityHead
from duet_verl.core.probe import PROBE_FEATURES, ProbeFeatures, ProbeRule, keep_probabilities
from duet_verl.core.protocol import RolloutReport, RolloutStopRule
from duet_verl.core.settings import DuetSettings

EOS = 2
LENGTH = 40  # tokens per synthetic rollout
DETECT = 16


NO_WEIGHTS = (0.0,) * len(PROBE_FEATURES)


def probe(keep_correct=1.0, keep_wrong=1.0, weights=NO_WEIGHTS, bias=0.0, at=DETECT):
    return ProbeRule(at, tuple(weights), bias, keep_correct, keep_wrong)


def token(rng, correct, informative=True):
    """Top-2 log-probs of one position: correct rollouts are more confident when the stream is informative."""
    center = 0.85 if (correct and informative) else 0.6
    p1 = float(np.clip(rng.normal(center, 0.08), 0.05, 0.99))
    return [math.log(p1), math.log((1.0 - p1) * 0.7)]


def generate(monitor, rng, correct, informative=True, length=LENGTH):
    """Feed a rollout to ``monitor`` as the server does; returns its record."""
    for t in range(length):
        if monitor.on_token("x", token(rng, correct, informative)) is not Action.CONTINUE:
            return monitor.record
    return monitor.finish(Outcome.NATURAL_EOS, length=length)


# -- the probe and the keep rule ----------------------------------------------------------------------------------


def test_keep_probabilities_balance_a_group_with_a_perfect_head():
    kc, kw = keep_probabilities(0.6, keep=0.5, target=0.5, min_keep=0.1)
    assert kc == pytest.approx(0.25 / 0.6) and kw == pytest.approx(0.25 / 0.4)
    survivors, correct = 0.6 * kc + 0.4 * kw, 0.6 * kc
    assert survivors == pytest.approx(0.5) and correct / survivors == pytest.approx(0.5)
    # an easy prompt: wrong rollouts are all kept (clipped at 1), correct ones pruned down toward the target
    assert keep_probabilities(0.8, 0.5, 0.5, 0.1) == pytest.approx((0.3125, 1.0))
    # a hopeless prompt keeps every (rare) correct rollout and half the target's share of the wrong ones
    assert keep_probabilities(0.0, 0.5, 0.5, 0.1) == pytest.approx((1.0, 0.25), rel=1e-5)
    assert keep_probabilities(0.99, 0.5, 0.5, 0.3)[0] == pytest.approx(0.3)  # the exploration floor
    for bad in ({"success": 1.5}, {"keep": 0.0}, {"min_keep": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            keep_probabilities(**{"success": 0.5, "keep": 0.5, "target": 0.5, "min_keep": 0.1, **bad})


def test_probe_features_are_the_documented_statistics():
    rows = [[math.log(0.9), math.log(0.05)], [math.log(0.4), math.log(0.3)], [math.log(0.7), math.log(0.2)]]
    features = ProbeFeatures()
    for row in rows:
        features.add(row)
    top1 = [r[0] for r in rows]
    recent = top1[0]
    for lp in top1[1:]:
        recent += (lp - recent) / 16
    expected = [np.mean(top1), np.mean([0.9 - 0.05, 0.4 - 0.3, 0.7 - 0.2]), 1 / 3, recent]
    assert features.values() == pytest.approx(expected)
    assert ProbeFeatures().values() == [0.0, 0.0, 0.0, 0.0]


def test_the_rule_travels_as_a_plain_dict_and_rejects_bad_values():
    config = StopRuleConfig(k1=0, k2=0, threshold=0.5, seed=7, stop_abort=False, probe=probe(0.3, 0.9, (1, 2, 3, 4)))
    rule = RolloutStopRule(config, EOS, 2)
    wire = json.loads(json.dumps(rule.to_dict()))
    assert RolloutStopRule.from_dict(wire) == rule
    with pytest.raises(ValueError, match="weights"):
        ProbeRule(8, (1.0,), 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="at"):
        ProbeRule(0, (0.0,) * 4, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="keep_wrong"):
        ProbeRule(8, (0.0,) * 4, 0.0, 1.0, 0.0)


def _config(rule, seed=1, stop_abort=False):
    return StopRuleConfig(k1=0, k2=0, threshold=0.5, seed=seed, min_tokens=0, stop_abort=stop_abort, probe=rule)


def test_the_monitor_prunes_only_at_the_detection_length_and_reports_what_it_read():
    rng = np.random.default_rng(0)
    pruned = StopAbortMonitor(_config(probe(keep_correct=1e-9, keep_wrong=1e-9)))  # prune (almost) surely
    record = generate(pruned, rng, correct=True)
    assert record.outcome is Outcome.PRUNED and record.ended_at == DETECT and record.length == DETECT
    assert len(record.probe_features) == len(PROBE_FEATURES) and record.probe_score == pytest.approx(0.5)
    kept = generate(StopAbortMonitor(_config(probe())), rng, correct=True)
    assert kept.outcome is Outcome.NATURAL_EOS and kept.length == LENGTH and kept.probe_features is not None
    short = generate(StopAbortMonitor(_config(probe(1e-9, 1e-9))), rng, correct=True, length=DETECT - 1)
    assert short.outcome is Outcome.NATURAL_EOS and short.probe_features is None  # ended before the probe


def test_without_stop_abort_a_confident_answer_is_not_stopped():
    """ARRoL's rollouts run DUET's monitor for the probe only: an answer marker followed by confident tokens, which
    DUET stops at, runs on."""
    confident = [math.log(0.99), math.log(0.005)]

    def run(stop_abort):
        config = StopRuleConfig(k1=0, k2=400, threshold=0.5, seed=3, min_tokens=0, eps_len=0.0, stop_abort=stop_abort)
        monitor = StopAbortMonitor(config)
        actions = [monitor.on_token("The answer is \\boxed{4}." if t == 0 else " ok", confident) for t in range(60)]
        return actions

    assert Action.STOP in run(stop_abort=True)
    assert set(run(stop_abort=False)) == {Action.CONTINUE}


# -- the policy through the controller --------------------------------------------------------------------------------


def arrol_controller(**arrol):
    settings = DuetSettings.from_mapping(
        {
            "policy": "arrol",
            "budget": 1.0,
            "arrol": {"detect_at": DETECT, "warmup_steps": 2, "min_samples": 16, **arrol},
        }
    )
    return DuetController(settings, group_size=8, response_cap=LENGTH)


def run_step(ctl, step, truth, rng, informative=True):
    """One step the way the trainer runs it; returns (prompt ids, rewards, reports) of the step's rollouts."""
    plan = ctl.plan(list(truth), step)
    ids, rewards, reports = [], [], []
    for pid, n, rule in zip(plan.prompt_ids, plan.n, plan.stop_rules, strict=True):
        for j in range(int(n)):
            correct = bool(rng.random() < truth[pid])
            monitor = StopAbortMonitor(rule.for_rollout(f"{pid}/{j}", EOS).monitor)
            record = generate(monitor, rng, correct, informative)
            ids.append(pid)
            rewards.append(float(correct))
            reports.append(RolloutReport.from_record(record))
    lengths = np.array([r.length for r in reports], dtype=np.float64)
    scores = torch.tensor(rewards).view(-1, 1)
    mask = torch.as_tensor(lengths).view(-1, 1)
    out = ctl.advantage(scores, mask, ids, reports, torch.zeros(len(ids), dtype=torch.bool), torch.ones(len(ids)))
    metrics = ctl.observe(
        StepObservation(
            ids,
            lengths,
            reports,
            out.scalar_advantages.numpy(),
            np.ones(len(ids)),
            unweighted_advantages=out.unweighted_advantages.numpy(),
            rewards=out.scores.numpy(),
        )
    )
    return np.array(rewards), reports, metrics


def survivors_positive_ratio(informative, steps=8, seed=0):
    """Share of correct rollouts among the survivors of prompts solved 80 % of the time, after the warm-up."""
    rng = np.random.default_rng(seed)
    truth = {f"p{i}": 0.8 for i in range(16)}
    ctl = arrol_controller()
    kept_correct = kept = started = 0
    for step in range(1, steps + 1):
        rewards, reports, metrics = run_step(ctl, step, truth, rng, informative)
        if step > 2:
            alive = np.array([r.outcome is not Outcome.PRUNED for r in reports])
            kept_correct, kept, started = kept_correct + rewards[alive].sum(), kept + alive.sum(), started + alive.size
    return kept_correct / kept, kept / started, ctl


def test_pruning_moves_an_easy_groups_positive_ratio_toward_one_half():
    ratio, survival, ctl = survivors_positive_ratio(informative=True)
    assert ctl.policy.head.fitted and ctl.policy.pruning
    assert ratio < 0.65  # from 0.8 unpruned; a perfect head would give 0.56 (keep_probabilities(0.8, ...))
    assert 0.3 < survival < 0.6
    # negative control: a stream that says nothing about success leaves only random pruning: the ratio stays at 0.8
    control, control_survival, _ = survivors_positive_ratio(informative=False)
    assert abs(control - 0.8) < 0.05 and control_survival < 0.75


def test_warm_up_prunes_nothing_and_trains_the_head():
    rng = np.random.default_rng(1)
    truth = {f"p{i}": float(v) for i, v in enumerate(np.linspace(0.1, 0.9, 12))}
    ctl = arrol_controller(warmup_steps=3)
    for step in (1, 2, 3):
        _, reports, metrics = run_step(ctl, step, truth, rng)
        assert all(r.outcome is not Outcome.PRUNED for r in reports)
        assert metrics["duet/arrol_pruning"] == 0.0 and metrics["duet/rate_pruned"] == 0.0
    assert ctl.policy.head.fitted and metrics["duet/arrol_examples"] == pytest.approx(
        sum(r.length >= DETECT for r in reports) * 3
    )
    _, reports, metrics = run_step(ctl, 4, truth, rng)
    assert metrics["duet/arrol_pruning"] == 1.0 and metrics["duet/rate_pruned"] > 0.2
    assert metrics["duet/arrol_head_accuracy"] > 0.75  # the stream's confidence gives success away


def test_pruned_rollouts_leave_the_loss_and_their_groups_baseline():
    ctl = arrol_controller()
    ids = ["a"] * 4
    reports = [RolloutReport(Outcome.NATURAL_EOS, 40)] * 3 + [RolloutReport(Outcome.PRUNED, 16)]
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(-1, 1)
    out = ctl.advantage(scores, torch.ones(4, 1), ids, reports, torch.zeros(4, dtype=torch.bool), torch.ones(4))
    survivors = torch.tensor([1.0, 0.0, 0.0])
    expected = (survivors - survivors.mean()) / (survivors.std() + 1e-6)
    assert out.scalar_advantages[:3].tolist() == pytest.approx(expected.tolist())
    assert out.scalar_advantages[3] == 0 and out.response_mask[3].sum() == 0


def test_the_budget_counts_what_pruning_saves():
    policy = ArrolPolicy(detect_at=DETECT, warmup_steps=0, min_samples=4, max_rollouts=16)
    lengths, ids = np.full(10, 100.0), [f"p{i}" for i in range(10)]
    request = AllocationRequest(ids, 1, np.zeros(10), lengths, budget=4000.0, group_size=8)
    assert policy.allocate(request).allocation.n.tolist() == [4] * 10  # not pruning yet: the plain budget
    policy.head.samples, policy.spend_ratio = 4, 0.5
    alloc = policy.allocate(request).allocation
    assert alloc.n.tolist() == [8] * 10 and alloc.spent <= 4000.0 / 0.5  # twice the rollouts at half the cost each
    assert alloc.budget == 4000.0 and alloc.budget_error == pytest.approx(-1.0)  # reported against the real budget
    policy.spend_ratio = 0.01
    assert policy.allocate(request).allocation.n.max() <= 16  # capped at n_max


def test_the_head_learns_weights_the_server_can_evaluate_without_sklearn():
    rng = np.random.default_rng(2)
    y = rng.random(400) < 0.5
    x = rng.normal(0, 1, (400, 4)) + np.where(y, 1.0, -1.0)[:, None] * np.array([1.0, 0.0, 0.0, 0.5])
    head = QualityHead(min_samples=32)
    head.fit(x, y)
    rule = ProbeRule(8, head.weights, head.bias, 1.0, 1.0)
    server = np.array([rule.keep_probability(row)[0] for row in x])
    assert server == pytest.approx(head.predict(x)) and np.mean((server > 0.5) == y) > 0.8
    single = QualityHead(min_samples=2)
    single.fit(x[:10], np.ones(10))  # one class: only the base rate, not fitted
    assert not single.fitted and single.weights == (0.0,) * 4 and single.predict(x[:1])[0] > 0.99
    assert single.samples == 10


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(4)
    truth = {f"p{i}": 0.7 for i in range(8)}
    ctl = arrol_controller()
    for step in range(1, 5):
        run_step(ctl, step, truth, rng)
    state = json.loads(json.dumps(ctl.state_dict()))
    twin = arrol_controller()
    twin.load_state_dict(state)
    assert twin.state_dict() == ctl.state_dict()
    a, b = ctl.plan(list(truth), 5), twin.plan(list(truth), 5)
    assert a.n.tolist() == b.n.tolist() and a.stop_rules == b.stop_rules


def test_edge_cases_an_empty_step_a_head_that_could_never_fit_and_an_older_report():
    policy = ArrolPolicy(detect_at=DETECT)
    empty = RolloutFeedback([], np.zeros(0), np.zeros(0, bool), np.zeros(0), np.zeros((0, 4)), 0.0, 0.0)
    assert policy.observe_rollouts(empty, step=1)["duet/arrol_probed_fraction"] == 0.0
    with pytest.raises(ValueError, match="min_samples"):
        ArrolPolicy(min_samples=64, buffer=32)
    older = RolloutReport(Outcome.NATURAL_EOS, 12).to_dict()
    del older["probe_features"], older["probe_score"]  # a server of the version before ARRoL
    assert RolloutReport.from_dict(older) == RolloutReport(Outcome.NATURAL_EOS, 12)
    with pytest.raises(ValueError, match="missing keys \\['outcome'\\]"):
        RolloutReport.from_dict({k: v for k, v in older.items() if k != "outcome"})
