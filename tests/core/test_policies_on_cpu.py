"""The budget policies of ``duet.policy`` (core/policies): budget, cold start, state round-trip, behaviour, config."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize

from duet_verl.core.allocator import even_allocation, token_budget
from duet_verl.core.controller import DuetController, StepObservation
from duet_verl.core.monitor import Outcome
from duet_verl.core.policies import POLICIES, AllocationRequest, build_policy
from duet_verl.core.policies.greso import EASY, GresoPolicy, admit_probability
from duet_verl.core.policies.vip import VipPolicy, smoothed_rate, vip_bounds
from duet_verl.core.protocol import RolloutReport
from duet_verl.core.rng import RolloutRandom, rollout_seed
from duet_verl.core.settings import DuetSettings

BASELINES = ("uniform", "greso", "vip", "arrol")
PRE_ROLLOUT = ("uniform", "greso", "vip")  # the baselines that act before rollout only (no monitor)


def controller(policy, group_size=8, **kw):
    return DuetController(DuetSettings.from_mapping({"policy": policy, **kw}), group_size=group_size, response_cap=256)


def observe(ctl, plan, pass_rate, rng, length=100):
    """Draw each planned prompt's rollouts with its pass rate (a dict) and feed them back as the trainer does."""
    ids, rewards = [], []
    for pid, n in zip(plan.prompt_ids, plan.n, strict=True):
        for _ in range(int(n)):
            ids.append(pid)
            rewards.append(float(rng.random() < pass_rate[pid]))
    rewards = np.array(rewards)
    reports = [RolloutReport(Outcome.NATURAL_EOS, length=length) for _ in ids]
    adv = rewards - rewards.mean() if rewards.size else rewards
    return ctl.observe(
        StepObservation(ids, np.full(len(ids), length), reports, adv, np.ones(len(ids)), rewards=rewards)
    )


def test_registry_names_and_only_duet_monitors():
    assert sorted(POLICIES) == ["arrol", "duet", "greso", "uniform", "vip"]
    assert [name for name, cls in POLICIES.items() if cls.monitors] == ["duet", "arrol"]
    assert [name for name, cls in POLICIES.items() if cls.monitors and cls.stop_abort] == ["duet"]
    for name in POLICIES:
        assert build_policy(DuetSettings.from_mapping({"policy": name}), group_size=8).name == name


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"policy": "duet2"}, "duet.policy"),
        ({"greso": {"p_easy": 0.0}}, "duet.greso.p_easy"),
        ({"greso": {"p_hard": 1.5}}, "duet.greso.p_hard"),
        ({"greso": {"target_zero_variance": -0.1}}, "duet.greso.target_zero_variance"),
        ({"greso": {"adjust_step": 2}}, "duet.greso.adjust_step"),
        ({"greso": {"min_explore": 0.9}}, "duet.greso.min_explore"),
        ({"vip": {"min_fraction": 0}}, "duet.vip.min_fraction"),
        ({"vip": {"max_fraction": 0.1}}, "duet.vip.min_fraction"),
        ({"vip": {"window": 0}}, "duet.vip.window"),
        ({"vip": {"refit_every": 0}}, "duet.vip.refit_every"),
        ({"vip": {"min_points": 1000}}, "duet.vip.min_points"),
        ({"vip": {"bogus": 1}}, "duet.vip.bogus"),
        ({"arrol": {"detect_at": 0}}, "duet.arrol.detect_at"),
        ({"arrol": {"keep": 0.0}}, "duet.arrol.keep"),
        ({"arrol": {"target": 1.5}}, "duet.arrol.target"),
        ({"arrol": {"min_keep": 0}}, "duet.arrol.min_keep"),
        ({"arrol": {"warmup_steps": -1}}, "duet.arrol.warmup_steps"),
        ({"arrol": {"regularization": 0}}, "duet.arrol.regularization"),
        ({"policy": "arrol", "stop": {"enable": False}}, "duet.stop.enable"),
    ],
)
def test_bad_policy_settings_name_their_key(data, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DuetSettings.from_mapping(data).validate(group_size=8)


@pytest.mark.parametrize("policy", PRE_ROLLOUT)
def test_baselines_carry_no_stop_rule_and_weight_one(policy):
    plan = controller(policy).plan([f"p{i}" for i in range(6)], step=1)
    assert plan.stop_rules == [None] * 6 and not plan.monitored
    assert np.all(plan.p_pre == 1.0)
    assert controller("duet").plan(["a"], step=1).monitored


@pytest.mark.parametrize("policy", ["duet", "greso", "vip"])
@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.floats(1.0, 2000.0), min_size=1, max_size=64),
    budget_fraction=st.sampled_from([0.25, 0.5, 1.0]),
    group_size=st.sampled_from([4, 8, 16]),
)
def test_budget_is_never_exceeded(policy, lengths, budget_fraction, group_size):
    settings_ = DuetSettings.from_mapping({"policy": policy, "budget": budget_fraction}).validate(group_size)
    chosen = build_policy(settings_, group_size)
    lengths = np.array(lengths)
    rng = np.random.default_rng(len(lengths))
    ids = [f"p{i}" for i in range(lengths.size)]
    if isinstance(chosen, GresoPolicy):  # some prompts on a zero-variance streak, so some are skipped
        chosen.streaks = {pid: (int(rng.integers(0, 4)), EASY) for pid in ids}
    budget = token_budget(lengths, group_size, budget_fraction)  # as the controller computes it
    request = AllocationRequest(ids, 3, rng.random(lengths.size), lengths, budget, group_size)
    alloc = chosen.allocate(request).allocation
    assert alloc.spent == pytest.approx(float(alloc.n @ lengths)) and alloc.spent <= budget
    assert alloc.n.min() >= 0 and alloc.n.max() <= max(group_size, settings_.n_max if policy == "duet" else 0)


def test_uniform_spends_exactly_grpos_count():
    plan = controller("uniform", budget=0.25).plan(["a", "b", "c"], step=1)
    assert plan.n.tolist() == [2, 2, 2] and plan.allocation.spent == 2 * 3 * 256


# -- GRESO ------------------------------------------------------------------------------------------------------------


def test_greso_cold_start_admits_every_prompt_with_grpos_budget():
    plan = controller("greso").plan([f"p{i}" for i in range(8)], step=1)
    assert plan.n.tolist() == [4] * 8  # no trace yet: b * G = 4 rollouts each, nothing skipped
    assert plan.metrics()["duet/greso_skipped_fraction"] == 0.0


def test_greso_skips_a_prompt_that_stayed_all_correct_and_readmits_it_with_the_documented_probability():
    policy = GresoPolicy(p_easy=0.5, p_hard=0.5, adjust_step=0.0, seed=7)
    for step in (1, 2):  # two epochs all correct: streak 2
        policy.observe(["easy", "mixed"], [[1.0] * 8, [1.0, 0.0] * 4], step)
    assert policy.streaks == {"easy": (2, EASY)}
    assert admit_probability(0.5, 2) == 0.25
    admitted = np.array([policy.admit(["easy", "mixed"], step) for step in range(3, 4003)])
    assert admitted[:, 1].all()  # a mixed last group: always rolled out
    expected = [RolloutRandom(rollout_seed(7, step, "greso/easy")).uniform() < 0.25 for step in range(3, 4003)]
    assert admitted[:, 0].tolist() == expected  # exactly the documented draw
    assert abs(admitted[:, 0].mean() - 0.25) < 0.02
    policy.observe(["easy"], [[1.0, 0.0, 1.0]], 4003)  # a mixed group ends the streak: always admitted again
    assert policy.admit(["easy"], 4004).tolist() == [True]


def test_greso_gives_a_skipped_prompts_tokens_to_the_others_within_budget():
    ctl = controller("greso", greso={"p_easy": 0.05, "min_explore": 0.05, "adjust_step": 0.0})
    ctl.policy.streaks = {"solved": (3, EASY)}  # admitted with probability 0.05**3
    plan = ctl.plan(["solved", "a", "b", "c"], step=1)
    assert plan.n.tolist() == [0, 6, 5, 5]  # budget 0.5 * 8 * 4 prompts = 16 rollouts, spread over three
    assert plan.allocation.spent <= plan.allocation.budget
    assert plan.metrics()["duet/greso_skipped_fraction"] == 0.25


def test_greso_exploration_tracks_the_target():
    policy = GresoPolicy(p_easy=0.5, p_hard=0.5, target_zero_variance=0.25, adjust_step=0.01)
    policy.observe(["a", "b", "c", "d"], [[1, 1], [1, 1], [0, 1], [0, 1]], 1)  # easy share 0.5 > 0.125; hard 0
    assert policy.explore == {"easy": pytest.approx(0.49), "hard": pytest.approx(0.51)}


def test_even_allocation_first_fit_and_nothing_for_inactive():
    alloc = even_allocation(np.array([10.0, 10.0, 30.0]), budget=75.0, active=np.array([True, True, False]), n_max=8)
    assert alloc.n.tolist() == [4, 3, 0] and alloc.spent == 70.0


# -- VIP --------------------------------------------------------------------------------------------------------------


def test_vip_bounds_are_the_papers_at_sixteen_and_scale_with_the_group():
    assert vip_bounds(16, 0.5, 1, 0.25, 1.0) == (4, 16)
    assert vip_bounds(8, 0.5, 1, 0.25, 1.0) == (2, 8)
    assert vip_bounds(4, 0.25, 1, 0.25, 1.0) == (1, 4)  # never above what the budget pays
    assert smoothed_rate([1, 1, 1]) == 3.5 / 4


def test_vip_cold_start_is_uniform():
    plan = controller("vip").plan([f"p{i}" for i in range(8)], step=1)
    assert plan.n.tolist() == [4] * 8 and plan.metrics()["duet/vip_gp_fitted"] == 0.0


def test_vip_gives_more_rollouts_to_prompts_near_one_half():
    rng = np.random.default_rng(0)
    ids = [f"p{i}" for i in range(24)]
    truth = {pid: (0.02, 0.5, 0.98)[i % 3] for i, pid in enumerate(ids)}
    ctl = controller("vip", group_size=16)
    for step in range(1, 6):
        plan = ctl.plan(ids, step)
        observe(ctl, plan, truth, rng)
    plan = ctl.plan(ids, 6)
    assert plan.metrics()["duet/vip_gp_fitted"] == 1.0
    n_by = {p: plan.n[[truth[q] == p for q in ids]].mean() for p in (0.02, 0.5, 0.98)}
    assert n_by[0.5] > 1.5 * max(n_by[0.02], n_by[0.98]), n_by  # measured: 11.0 vs 6.4 and 6.6
    assert plan.n.min() >= 4 and plan.n.max() <= 16 and plan.allocation.spent <= plan.allocation.budget


def test_vip_integer_allocation_is_near_scipys_continuous_optimum():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 40)
    lengths = rng.uniform(50, 500, 40)
    budget = 8 * lengths.sum()
    policy = VipPolicy(n_lo=4, n_hi=16)
    policy.last_rate = {f"q{i}": float(x) for i, x in enumerate(p)}
    ids = [f"q{i}" for i in range(40)]
    alloc = policy.allocate(AllocationRequest(ids, 1, np.ones(40), lengths, budget, 16)).allocation
    v = p * (1 - p)
    relaxed = optimize.minimize(
        lambda n: float(np.sum(v / n)),
        np.full(40, 8.0),
        jac=lambda n: -v / n**2,
        bounds=[(4, 16)] * 40,
        constraints=[{"type": "ineq", "fun": lambda n: budget - n @ lengths, "jac": lambda n: -lengths}],
        method="SLSQP",
    )
    assert relaxed.success
    integer = float(np.sum(v / alloc.n))
    assert relaxed.fun <= integer * (1 + 1e-6) and integer <= relaxed.fun * 1.03


# -- state ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["duet", *BASELINES])
def test_state_round_trip_continues_identically(policy):
    rng = np.random.default_rng(3)
    ids = [f"p{i}" for i in range(20)]
    truth = {pid: float(rng.choice([0.0, 0.3, 0.7, 1.0])) for pid in ids}
    ctl = controller(policy, vip={"min_points": 4})
    for step in range(1, 5):
        observe(ctl, ctl.plan(ids, step), truth, rng)
    state = json.loads(json.dumps(ctl.state_dict()))
    assert state["policy"]["name"] == policy
    twin = controller(policy, vip={"min_points": 4})
    twin.load_state_dict(state)
    assert twin.state_dict() == ctl.state_dict()
    a, b = ctl.plan(ids, 5), twin.plan(ids, 5)
    assert a.n.tolist() == b.n.tolist() and a.p_pre.tolist() == b.p_pre.tolist()
    assert a.metrics() == b.metrics()


def test_a_checkpoint_of_another_policy_leaves_the_policy_fresh():
    ctl = controller("greso")
    ctl.policy.streaks = {"x": (2, EASY)}
    fresh = controller("vip")
    changed = fresh.load_state_dict(json.loads(json.dumps(ctl.state_dict())))
    assert changed["policy"] == ("greso", "vip") and fresh.policy.targets == []
    older = ctl.state_dict()
    del older["policy"]  # a state saved before the policies existed is DUET's
    assert "policy" not in controller("duet").load_state_dict(older)
