import json

import numpy as np
import pytest

from duet_verl.core.controller import DuetController, StepObservation
from duet_verl.core.monitor import Outcome, StopAbortMonitor
from duet_verl.core.protocol import PromptStopRule, RolloutReport
from duet_verl.core.settings import DuetSettings


def controller(**kw):
    return DuetController(DuetSettings.from_mapping(kw), group_size=8, response_cap=256)


def test_cold_batch_is_uniform_and_rules_are_complete():
    ctl = controller()
    plan = ctl.plan([f"p{i}" for i in range(16)], step=1)
    assert np.all(plan.n == 4)  # no information: budget 0.5 * G=8 each
    assert plan.cold.all() and plan.allocation.spent <= plan.allocation.budget
    prompt_rule = PromptStopRule.from_dict(plan.stop_rules[0].to_dict())  # as it travels in the batch
    assert prompt_rule == plan.stop_rules[0]
    rule = prompt_rule.for_rollout("p0/3", eos_token_id=7)
    cfg = rule.monitor
    assert (cfg.k1, cfg.k2) == (int(0.3 * 256), int(0.7 * 256)) and rule.eos_token_id == 7 and rule.top_logprobs == 2
    StopAbortMonitor(cfg)  # builds
    assert rule.monitor.seed != prompt_rule.for_rollout("p0/4", 7).monitor.seed
    assert rule == prompt_rule.for_rollout("p0/3", 7)
    metrics = plan.metrics()
    assert metrics["duet/n_total"] == 64 and metrics["duet/cold_prompt_fraction"] == 1.0


def test_stop_disabled_gives_no_rules():
    plan = controller(stop={"enable": False}).plan(["a", "b"], step=1)
    assert plan.stop_rules == [None, None]


def reports(*outcomes):
    return [RolloutReport(Outcome(o), length=0) for o in outcomes]


def _observe(ctl, ids, n_each, sigma_by_prompt, rng, length=100):
    pids, adv, lp, lengths = [], [], [], []
    for pid in ids:
        for _ in range(n_each):
            pids.append(pid)
            a = rng.normal() * sigma_by_prompt[pid]
            adv.append(a)
            lp.append(1.0)
            lengths.append(length)
    outcomes = reports(*["natural_eos"] * len(pids))
    return ctl.observe(StepObservation(pids, np.array(lengths), outcomes, np.array(adv), np.array(lp)))


def test_learning_shifts_rollouts_to_informative_prompts():
    rng = np.random.default_rng(0)
    ctl = controller(surrogate={"signal": "grad_trace"})
    ids = [f"p{i}" for i in range(8)]
    sigma = {pid: (5.0 if i < 2 else 0.01) for i, pid in enumerate(ids)}
    ctl.plan(ids, step=1)
    metrics = _observe(ctl, ids, 8, sigma, rng)
    assert metrics["duet/rate_natural_eos"] == 1.0 and metrics["duet/tokens_generated"] == 6400
    # the controller reports the plan it made too (kept as last_plan)
    assert metrics["duet/n_total"] == 32 and metrics["duet/tokens_vs_budget"] == pytest.approx(
        6400 / (0.5 * 8 * 8 * 256)
    )
    plan = ctl.plan(ids, step=2)
    assert not plan.cold.any()
    assert plan.n[:2].min() > plan.n[2:].max()
    assert plan.allocation.spent <= plan.allocation.budget
    assert plan.lengths == pytest.approx(np.full(8, 100.0))


def test_aborted_rollouts_do_not_count_as_kept_lengths():
    ctl = controller()
    ctl.plan(["a"], step=1)
    ctl.observe(
        StepObservation(
            ["a", "a", "a"],
            np.array([10, 20, 999]),
            reports("natural_eos", "eps_kept", "aborted"),
            np.array([1.0, -1.0, 0.0]),
            np.array([1.0, 1.0, 1.0]),
        )
    )
    assert ctl.plan(["a"], step=2).lengths[0] == pytest.approx(15.0)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a, b = controller(), controller()
    ids = [f"p{i}" for i in range(6)]
    a.plan(ids, 1)
    _observe(a, ids, 4, {p: rng.uniform(0.1, 3) for p in ids}, rng)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    pa, pb = a.plan(ids + ["new"], 2), b.plan(ids + ["new"], 2)
    np.testing.assert_array_equal(pa.n, pb.n)
    assert pa.stop_rules == pb.stop_rules
    with pytest.raises(ValueError, match="version"):
        b.load_state_dict({"version": 99})


def test_resume_restores_learned_state_and_keeps_the_current_settings():
    rng = np.random.default_rng(2)
    a = controller(surrogate={"k_warmup": 1, "signal": "grad_trace"})
    ids = [f"p{i}" for i in range(4)]
    a.plan(ids, 1)
    _observe(a, ids, 4, {p: 1.0 for p in ids}, rng)
    b = controller(surrogate={"k_warmup": 3, "sigma_min": 0.5, "signal": "grad_trace"})
    changed = b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert changed == {"k_warmup": (1, 3), "sigma_min": (0.001, 0.5)}
    assert b.surrogate.k_warmup == 3 and b.surrogate.sigma_min == 0.5  # the current config wins
    assert b.surrogate.observations("p0") == 1  # the learned state came back
    assert b.plan(ids, 2).cold.all()  # one observation < k_warmup=3: still cold under the new setting
    assert not a.plan(ids, 2).cold.any()


OLD = {"surrogate": {"signal": "grad_trace", "sigma_from": "weighted", "pseudo_count": 0.0, "decay": 1.0}}


def test_measurement_floor_keeps_zero_variance_prompts_measured():
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(8)]
    sigma = {pid: (0.0 if i < 4 else 1.0) for i, pid in enumerate(ids)}
    old = controller(**OLD, explore={"floor": 1})
    new = controller()
    for ctl in (old, new):
        ctl.plan(ids, step=1)
        _observe(ctl, ids, 4, sigma, rng)
    assert np.all(old.plan(ids, step=2).n[:4] == 1)  # the trap: one rollout, no sigma ever again
    assert np.all(new.plan(ids, step=2).n >= 2)


def test_reprobe_draw_is_reproducible_and_weighted():
    ids = [f"p{i}" for i in range(200)]
    ctl = controller(**OLD, explore={"floor": 2, "reprobe": 0.25})
    ctl.plan(ids, step=1)
    rng = np.random.default_rng(4)
    _observe(ctl, ids, 4, {pid: (0.0 if i % 2 else 1.0) for i, pid in enumerate(ids)}, rng)
    plan = ctl.plan(ids, step=2)
    again = controller(**OLD, explore={"floor": 2, "reprobe": 0.25})
    again.load_state_dict(ctl.state_dict())
    np.testing.assert_array_equal(again.plan(ids, step=2).n, plan.n)
    lifted = plan.reprobed
    assert 0.05 < lifted.mean() < 0.25  # about a quarter of the zero-sigma half
    np.testing.assert_array_equal(plan.n[lifted], 2)
    expected = np.clip(2 / plan.n.mean() * 0.25, 0.05, 1.0)
    np.testing.assert_allclose(plan.p_pre[lifted], expected)
    assert plan.metrics()["duet/reprobed_fraction"] == pytest.approx(lifted.mean())


def test_sigma_from_unweighted_ignores_the_weight():
    ids = ["a", "b"]
    obs = StepObservation(
        ["a", "a", "b", "b"],
        np.full(4, 10),
        reports("natural_eos", "eps_kept", "natural_eos", "natural_eos"),
        scalar_advantages=np.array([-1.0, 20.0, -1.0, 1.0]),  # the eps-kept row weighted 20x
        seq_logprob_sums=np.ones(4),
        unweighted_advantages=np.array([-1.0, 1.0, -1.0, 1.0]),
    )
    sig = {}
    for source in ("unweighted", "weighted"):
        ctl = controller(surrogate={"signal": "grad_trace", "sigma_from": source, "pseudo_count": 0.0})
        ctl.plan(ids, step=1)
        ctl.observe(obs)
        sig[source] = ctl.plan(ids, step=2).scores
    np.testing.assert_allclose(sig["unweighted"], [1.0, 1.0])
    np.testing.assert_allclose(sig["weighted"], [10.5, 1.0])


def test_floor_that_the_budget_cannot_pay_is_dropped_and_reported():
    plan = controller(budget=0.125).plan([f"p{i}" for i in range(4)], step=1)  # b * G = 1 rollout per prompt
    assert np.all(plan.n == 1) and plan.metrics()["duet/floor_dropped"] == 1.0
    assert controller().plan(["a"], step=1).metrics()["duet/floor_dropped"] == 0.0


def test_allocation_off_gives_every_prompt_grpos_count_with_weight_one():
    settings = DuetSettings.from_mapping({"budget": 0.5, "allocate": False})
    controller = DuetController(settings, group_size=8, response_cap=256)
    plan = controller.plan([str(i) for i in range(10)], step=1)
    assert plan.allocation.n.tolist() == [4] * 10 and np.all(plan.allocation.p_pre == 1.0)
    assert all(rule is not None for rule in plan.stop_rules)  # the stop/abort rule still acts


@pytest.mark.parametrize(("policy", "fed"), [("duet", False), ("uniform", False), ("arrol", True)])
def test_only_a_policy_that_reads_single_rollouts_gets_them(policy, fed, monkeypatch):
    """The per-rollout feedback (ARRoL's quality head) is built only for a policy that reads it."""
    ctl = controller(policy=policy)
    built = []
    feedback = ctl._feedback
    monkeypatch.setattr(ctl, "_feedback", lambda *a: built.append(1) or feedback(*a))
    ctl.plan(["a", "b"], step=1)
    ctl.observe(
        StepObservation(
            ["a", "a", "b", "b"],
            np.array([10, 20, 30, 40]),
            reports(*["natural_eos"] * 4),
            np.array([1.0, -1.0, 1.0, -1.0]),
            np.ones(4),
            rewards=np.array([1.0, 0.0, 1.0, 0.0]),
        )
    )
    assert bool(built) is fed
