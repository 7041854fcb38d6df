"""The quickstart runs the budget-aware baselines as ``duet.policy`` through DUET's trainer at the same budget."""

import pytest

from duet_verl.core.policies import POLICIES
from duet_verl.demo.quickstart import BASELINES, METHODS, QuickstartConfig, parse_policy, policy_overrides


@pytest.mark.parametrize("method", BASELINES)
def test_baselines_map_to_duet_policy_overrides(method, tmp_path):
    assert method in METHODS and method in POLICIES
    cfg = QuickstartConfig(group_size=8)
    paths = {"model": "m", "train": "t", "val": "v"}
    overrides = policy_overrides(parse_policy(f"{method}@0.25"), cfg, paths, tmp_path)
    assert f"duet.policy={method}" in overrides and "duet.budget=0.25" in overrides and "duet.enable=true" in overrides
    assert "actor_rollout_ref.rollout.n=8" in overrides  # the policy, not verl's n, sets the rollouts per prompt
    assert not any(o.startswith("duet.stop.") or o.startswith("duet.allocate") for o in overrides)
    sized = [o for o in overrides if o.startswith(f"duet.{method}.")]  # sized for the quickstart, arrol only
    assert sized == (["duet.arrol.detect_at=16", "duet.arrol.warmup_steps=4"] if method == "arrol" else [])


def test_unknown_method_lists_the_baselines():
    with pytest.raises(ValueError, match="greso, vip, arrol"):
        parse_policy("knapsack@0.5")
