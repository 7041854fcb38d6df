"""``duet-verl simulate`` on a small population: the JSON contract, invariants, and a negative control."""

import io
import json
import math

import pytest

from duet_verl.cli import main
from duet_verl.tools.simulate import OLD_SETTINGS, SimConfig, run_policy, simulate, spearman

SMALL = {"prompts": 512, "batch": 64, "epochs": 3}


def test_cli_prints_progress_then_one_json_line(capsys):
    args = ["simulate", "--prompts", "512", "--batch", "64", "--epochs", "3"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("[simulate] duet@0.5: epoch 1/3") for line in lines[:-1])
    out = json.loads(lines[-1])
    for key in ("stuck_fraction", "gradient_rollout_ratio", "score_spearman", "budget_use", "ess_fraction"):
        assert isinstance(out[key], float), key
    assert set(out["policies"]) == {"grpo@1.0", "grpo@0.5", "duet@0.5", "duet-old@0.5"}
    for result in out["policies"].values():
        assert 0.0 <= result["gradient_rollout_fraction"] <= 1.0
    grpo, duet = out["policies"]["grpo@1.0"], out["policies"]["duet@0.5"]
    assert grpo["rollouts"] == 512 * 3 * 8 and grpo["stuck_fraction"] == 0.0
    assert 0.0 <= out["stuck_fraction"] <= 1.0 and -1.0 <= out["score_spearman"] <= 1.0
    assert 0.5 < out["budget_use"] < 1.2  # kept lengths plan the budget; aborted tails can overshoot a little
    assert 0.0 < out["ess_fraction"] <= 1.0
    assert duet["tokens"] < 0.6 * grpo["tokens"]


def test_new_defaults_leave_no_prompt_stuck_and_the_old_settings_do():
    cfg = SimConfig(**SMALL, seed=5)
    new = run_policy("duet@0.5", cfg, out=io.StringIO())
    old = run_policy("duet-old@0.5", cfg, out=io.StringIO())
    assert new["stuck_fraction"] <= 0.02
    assert old["stuck_fraction"] > new["stuck_fraction"] + 0.2  # the zero-variance trap
    assert new["score_spearman"] >= 0.5


def test_targets_of_the_default_run_hold_on_a_smaller_population():
    out = simulate(SimConfig(**SMALL, policies=("grpo@1.0", "duet@0.5")), out=io.StringIO())
    assert out["stuck_fraction"] <= 0.02
    assert out["gradient_rollout_ratio"] >= 1.1  # 1.38 at the full default size (README); fewer warm epochs here
    assert out["score_spearman"] >= 0.5


def test_old_settings_are_the_reference_surrogate():
    assert OLD_SETTINGS["surrogate"]["sigma_from"] == "weighted" and OLD_SETTINGS["explore"]["floor"] == 1


def test_spearman_with_ties_and_degenerate_input():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize(
    "args",
    [
        ["--duet", '{"surrogate": {"pseudo_count": -1}}'],
        ["--policies", "ppo@0.5"],
        ["--policies", "vip"],
        ["--batch", "0"],
        ["--duet", "{"],
        ["--duet", '{"policy": "arroll"}'],
    ],
)
def test_cli_rejects_bad_arguments(args, capsys):
    with pytest.raises(SystemExit):
        main(["simulate", *args])
    assert "error" in capsys.readouterr().err


def test_every_policy_runs_side_by_side_at_the_same_budget():
    policies = ("grpo@1.0", "uniform@0.5", "duet@0.5", "greso@0.5", "vip@0.5")
    out = simulate(SimConfig(**SMALL, policies=policies), out=io.StringIO())
    rows = out["policies"]
    assert set(rows) == set(policies)
    for name in policies[1:]:
        assert 0.4 <= rows[name]["token_ratio_vs_grpo"] <= 0.55, name  # half GRPO@1.0's tokens, whatever the policy
        assert rows[name]["budget_use"] <= 1.0 + 1e-9, name  # no abort tails without the monitor; DUET's are small
    assert rows["grpo@1.0"]["gradient_rollout_ratio"] == 1.0
    # GRESO skips zero-variance prompts (so some learnable ones go without rollouts in an epoch); VIP and DUET move
    # rollouts toward informative prompts and beat the uniform split of the same budget
    assert rows["greso@0.5"]["stuck_fraction"] > 0.0 and rows["uniform@0.5"]["stuck_fraction"] == 0.0
    for name in ("vip@0.5", "duet@0.5", "greso@0.5"):
        assert rows[name]["gradient_rollout_ratio"] > rows["uniform@0.5"]["gradient_rollout_ratio"], name
