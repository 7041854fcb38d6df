import inspect
from pathlib import Path

import pytest
import yaml

import duet_verl
from duet_verl.core.advantage import duet_advantage
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.settings import DuetSettings


def test_defaults_are_the_papers_and_valid():
    s = DuetSettings().validate(group_size=8)
    assert (s.budget, s.n_min, s.n_max, s.eps_pre) == (0.5, 1, 32, 0.05)
    assert (s.stop.min_tokens, s.stop.grace, s.stop.hysteresis, s.stop.eps_len, s.stop.eps_abort) == (
        200,
        150,
        5,
        0.05,
        0.05,
    )
    assert (s.gates.k1_init, s.gates.k2_init, s.gates.update_every) == (0.3, 0.7, 10)
    assert s.weights.max_weight == 1000.0


def test_from_mapping_partial_and_nested():
    s = DuetSettings.from_mapping({"budget": 0.25, "stop": {"marker_domains": ["code"], "signal": "entropy"}})
    assert s.budget == 0.25 and s.stop.marker_domains == ("code",) and s.stop.signal == "entropy"
    assert s.stop.hysteresis == 5  # untouched default


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"budget": -1}, "duet.budget"),
        ({"budget": 0}, "duet.budget"),
        ({"budget": 1.5}, "duet.budget"),
        ({"n_min": 0}, "duet.n_min"),
        ({"n_min": 5, "n_max": 4}, "duet.n_min"),
        ({"eps_pre": 0}, "duet.eps_pre"),
        ({"seed": 1.5}, "duet.seed"),
        ({"surrogate": {"sigma_min": -1}}, "duet.surrogate.sigma_min"),
        ({"surrogate": {"k_warmup": 0}}, "duet.surrogate.k_warmup"),
        ({"stop": {"marker_domains": ["poetry"]}}, "duet.stop.marker_domains"),
        ({"stop": {"marker_regexes": ["(bad"]}}, "duet.stop.marker_regexes"),
        ({"stop": {"signal": "vibes"}}, "duet.stop.signal"),
        ({"stop": {"eps_abort": 0}}, "duet.stop.eps_abort"),
        ({"stop": {"top_logprobs": 1}}, "duet.stop.top_logprobs"),
        ({"stop": {"threshold_low": 0.9, "threshold_high": 0.5}}, "duet.stop.threshold_low"),
        ({"stop": {"threshold_mode": "median"}}, "duet.stop.threshold_mode"),
        ({"gates": {"q1": 0.9, "q2": 0.1}}, "duet.gates.q1"),
        ({"gates": {"window": 0}}, "duet.gates.window"),
        ({"weights": {"singleton": "mean"}}, "duet.weights.singleton"),
        ({"weights": {"max_weight": 0.5}}, "duet.weights.max_weight"),
        ({"bogus": 1}, "duet.bogus"),
        ({"stop": {"bogus": 1}}, "duet.stop.bogus"),
        ({"stop": 3}, "duet.stop"),
        ({"stop": {"marker_domains": "math"}}, "duet.stop.marker_domains"),
        ({"stop": {"marker_domains": [], "marker_regexes": []}}, "duet.stop.marker_domains"),
        ({"stop": {"eps_abort": 1.5}}, "duet.stop.eps_abort"),
        ({"stop": {"eps_len": -0.1}}, "duet.stop.eps_len"),
        ({"stop": {"hysteresis": 0}}, "duet.stop.hysteresis"),
        ({"stop": {"threshold_high": 2}}, "duet.stop.threshold_high"),
        ({"surrogate": {"ridge_l2": 0}}, "duet.surrogate.ridge_l2"),
        ({"surrogate": {"ridge_decay": 0}}, "duet.surrogate.ridge_decay"),
        ({"surrogate": {"feature_key": ""}}, "duet.surrogate.feature_key"),
        ({"gates": {"k1_floor": -1}}, "duet.gates.k1_floor"),
        ({"gates": {"k1_init": 0.8, "k2_init": 0.2}}, "duet.gates.k1_init"),
        ({"weights": {"aborted_baseline": "drop"}}, "duet.weights.aborted_baseline"),
        ({"weights": {"failure_score": float("nan")}}, "duet.weights.failure_score"),
        ({"surrogate": {"signal": "vibes"}}, "duet.surrogate.signal"),
        ({"surrogate": {"sigma_from": "both"}}, "duet.surrogate.sigma_from"),
        ({"surrogate": {"pseudo_count": -1.0}}, "duet.surrogate.pseudo_count"),
        ({"surrogate": {"decay": 0.0}}, "duet.surrogate.decay"),
        ({"surrogate": {"decay": 1.5}}, "duet.surrogate.decay"),
        ({"surrogate": {"prior_strength": 0.0}}, "duet.surrogate.prior_strength"),
        ({"surrogate": {"length_scale": "yes"}}, "duet.surrogate.length_scale"),
        ({"explore": {"floor": 0}}, "duet.explore.floor"),
        ({"explore": {"reprobe": 0.0}}, "duet.explore.reprobe"),
        ({"explore": {"reprobe": 1.5}}, "duet.explore.reprobe"),
        ({"explore": {"bogus": 1}}, "duet.explore.bogus"),
        ({"weights": {"row_share_cap": 0.0}}, "duet.weights.row_share_cap"),
        ({"gates": {"censored": "yes"}}, "duet.gates.censored"),
    ],
)
def test_every_bad_value_names_its_key(data, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DuetSettings.from_mapping(data).validate(group_size=8)


def test_budget_must_leave_n_min_per_prompt():
    with pytest.raises(ValueError, match=r"duet\.budget.*rollout\.n"):
        DuetSettings.from_mapping({"budget": 0.1, "n_min": 1}).validate(group_size=8)
    DuetSettings.from_mapping({"budget": 0.125}).validate(group_size=8)


def test_the_yaml_section_equals_the_settings_defaults():
    """``config/duet_trainer.yaml``'s ``duet:`` section is DuetSettings() (as verl checks its own YAML)."""
    path = Path(duet_verl.__file__).parent / "config" / "duet_trainer.yaml"
    section = yaml.safe_load(path.read_text())["duet"]
    assert section == DuetSettings().to_dict()


def test_defaults_have_one_home_in_the_core():
    s = DuetSettings()
    weights = inspect.signature(duet_advantage).parameters
    assert s.weights.max_weight == weights["max_weight"].default
    assert s.weights.aborted_baseline == weights["aborted_baseline"].default
    assert weights["eps_abort"].default == StopRuleConfig.eps_abort == s.stop.eps_abort
