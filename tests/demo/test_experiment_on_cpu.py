"""The quickstart's paired-seed experiment: statistics, aggregation over seeds, the new policies."""

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from duet_verl.demo.quickstart import (
    METHODS,
    QuickstartConfig,
    aggregate_runs,
    format_table,
    parse_policy,
    plot_accuracy,
    policy_overrides,
    step0_spread,
    summarize_run,
)
from duet_verl.demo.stats import auc_tokens, mean_ci95, paired_difference


def test_mean_ci95_is_the_student_t_interval():
    values = [0.10, 0.14, 0.12, 0.16, 0.13]
    mean, (lo, hi) = mean_ci95(values)
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / np.sqrt(5)
    assert mean == pytest.approx(0.13) and lo == pytest.approx(0.13 - half) and hi == pytest.approx(0.13 + half)
    assert mean_ci95([0.2]) == (0.2, None)  # one seed: no interval
    with pytest.raises(ValueError):
        mean_ci95([])


def test_paired_difference_removes_what_the_seed_explains():
    # the seed shifts both policies alike: the paired interval is tight, an unpaired one would not be
    base = {0: 0.10, 1: 0.30, 2: 0.20, 3: 0.40}
    duet = {s: v + 0.05 for s, v in base.items()}
    diff = paired_difference(duet, base)
    assert diff["mean"] == pytest.approx(0.05) and diff["ci95"][0] == pytest.approx(0.05)
    assert diff["seeds"] == [0, 1, 2, 3]
    unpaired = mean_ci95(list(duet.values()))[1]
    assert unpaired[1] - unpaired[0] > 0.2
    assert paired_difference({0: 0.3, 9: 0.1}, {0: 0.2})["seeds"] == [0]  # only common seeds pair
    with pytest.raises(ValueError):
        paired_difference({1: 0.1}, {2: 0.1})


def test_auc_tokens_is_the_trapezoid_area():
    curve = [{"tokens": 100.0, "accuracy": 0.2}, {"tokens": 0.0, "accuracy": 0.1}, {"tokens": 300.0, "accuracy": 0.2}]
    assert auc_tokens(curve) == pytest.approx(100 * 0.15 + 200 * 0.2)
    assert auc_tokens(curve[:1]) == 0.0


def run(seed, final, tokens=1000.0, wall=60.0):
    curve = [
        {"step": 0, "tokens": 0.0, "seconds": 0.0, "accuracy": 0.1},
        {"step": 4, "tokens": tokens, "seconds": wall, "accuracy": final},
    ]
    return {
        "policy": "x",
        "seed": seed,
        "steps": 4,
        "tokens_total": tokens,
        "initial_accuracy": 0.1,
        "final_accuracy": final,
        "wall_clock_s": wall,
        "gen_time_s": wall / 2,
        "abort_rate": None,
        "marker_stop_rate": None,
        "eps_kept_rate": None,
        "duet_overhead_share": None,
        "step_s_median": 4.0,
        "advantage_s_median": 0.05,
        "duet_s_median": 0.07,
        "score_mismatch": 0.0,
        "accuracy_curve": curve,
    }


def test_aggregate_over_paired_seeds_has_every_field_the_issue_asks_for(tmp_path):
    grpo_final, duet_final = [0.20, 0.25, 0.22, 0.30, 0.18], [0.21, 0.24, 0.25, 0.29, 0.20]
    grpo = {s: run(s, f, tokens=2000.0) for s, f in enumerate(grpo_final)}
    duet = {s: run(s, f, tokens=900.0, wall=40.0) for s, f in enumerate(duet_final)}
    base = aggregate_runs(parse_policy("grpo@1.0"), grpo, grpo)
    entry = aggregate_runs(parse_policy("duet@0.5"), duet, grpo)
    assert base["diff_vs_grpo1"] is None and base["seeds"] == [0, 1, 2, 3, 4]
    assert entry["method"] == "duet" and entry["budget"] == 0.5 and len(entry["runs"]) == 5
    assert entry["final_accuracy_mean"] == pytest.approx(np.mean(duet_final))
    lo, hi = entry["final_accuracy_ci95"]
    assert lo < entry["final_accuracy_mean"] < hi
    diff = entry["diff_vs_grpo1"]
    assert diff["mean"] == pytest.approx(np.mean([0.01, -0.01, 0.03, -0.01, 0.02]))
    assert diff["ci95"] == pytest.approx(list(mean_ci95([0.01, -0.01, 0.03, -0.01, 0.02])[1]))
    assert entry["tokens_total_mean"] == 900.0 and entry["wall_clock_s_mean"] == 40.0 and entry["gen_time_s_mean"] == 20
    assert entry["auc_tokens_mean"] == pytest.approx(
        np.mean([900 * (0.1 + f) / 2 for f in [0.21, 0.24, 0.25, 0.29, 0.20]])
    )
    last = entry["accuracy_curve"][-1]
    assert last["step"] == 4 and last["accuracy"] == pytest.approx(entry["final_accuracy_mean"])
    assert last["accuracy_ci95"] == pytest.approx(entry["final_accuracy_ci95"])
    # DUET's time beyond GRPO's own advantage stage on the same seed: (0.07 - 0.05) / 4
    assert entry["duet_net_share"] == pytest.approx(0.005)
    assert aggregate_runs(parse_policy("duet@0.5"), duet, None)["duet_net_share"] is None
    json.dumps(entry)  # summary.json material
    assert "duet@0.5" in format_table([base, entry])
    for x in ("tokens", "seconds"):
        path = plot_accuracy([base, entry], tmp_path / f"{x}.png", x=x)
        assert path.stat().st_size > 10_000


def test_step0_spread_is_the_largest_within_seed_difference():
    runs = {"grpo@1": {0: run(0, 0.2), 1: run(1, 0.2)}, "duet@0.5": {0: run(0, 0.3), 1: run(1, 0.3)}}
    assert step0_spread(runs) == 0.0  # same model, same sampling seeds: the same number
    runs["duet@0.5"][1]["initial_accuracy"] = 0.13
    runs["grpo@1"][0]["initial_accuracy"] = 0.5  # seed 0: 0.4 apart; policies of different seeds are not compared
    assert step0_spread(runs) == pytest.approx(0.4)
    assert step0_spread({"grpo@1": {0: run(0, 0.2)}}) is None


def test_new_policies_map_to_their_overrides(tmp_path):
    assert {"grpo-aa", "duet-stop"} <= set(METHODS)
    cfg = QuickstartConfig(seed=3)
    paths = {"model": "m", "train": "t", "val": "v"}
    aa = policy_overrides(parse_policy("grpo-aa@1.0"), cfg, paths, tmp_path)
    grpo = policy_overrides(parse_policy("grpo@1.0"), cfg, paths, tmp_path)
    assert "data.seed=1003" in aa and "data.seed=3" in grpo and "duet.enable=false" in aa
    stop = policy_overrides(parse_policy("duet-stop@0.5"), cfg, paths, tmp_path)
    assert "duet.allocate=false" in stop and "duet.stop.enable=true" in stop
    duet = policy_overrides(parse_policy("duet@0.5"), cfg, paths, tmp_path)
    assert "duet.allocate=true" in duet
    with pytest.raises(ValueError, match="duet-stop"):
        parse_policy("vibes@0.5")


def test_validation_files_with_unicode_line_separators_in_generations(tmp_path):
    from duet_verl.demo.quickstart import validation_accuracy

    (tmp_path / "validation").mkdir()
    rows = [{"output": "x\u2028y\x85z", "score": 1.0}, {"output": "w", "score": 0.0}]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    (tmp_path / "validation" / "3.jsonl").write_text("\n".join(lines) + "\n")
    assert validation_accuracy(tmp_path) == {3: 0.5}


def test_heldout_profile_counts_too_hard_too_easy_and_the_habits(tmp_path):
    from duet_verl.demo.quickstart import heldout_profile

    def gen(prompt, output, score):
        return {"input": prompt, "output": output, "score": score}

    rows = [
        gen("easy", "\\boxed{1}", 1.0),
        gen("easy", "so \\boxed{1}", 1.0),
        gen("hard", "no answer at all", 0.0),
        gen("hard", "\\boxed{2} Hmm, wait.", 0.0),
        gen("mixed", "\\boxed{3}  ", 1.0),
        gen("mixed", "\\boxed{4} I think so.\u2028", 0.0),
    ]
    path = tmp_path / "0.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    assert heldout_profile(path) == {
        "prompts": 3,
        "never_solved": pytest.approx(1 / 3),
        "always_solved": pytest.approx(1 / 3),
        "no_answer": pytest.approx(1 / 6),
        "talks_after_answer": pytest.approx(2 / 6),  # trailing whitespace is not talk
    }


@pytest.mark.parametrize(("task", "message"), [("search", "no unused problem left"), ("poetry", "unknown task")])
def test_quickstart_refuses_tasks_that_cannot_fill_its_sets_before_building_anything(tmp_path, capsys, task, message):
    from duet_verl.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse's error: exit status 2, the reason on stderr
        main(["quickstart", "--out", str(tmp_path / "qs"), "--task", task])
    assert exit_info.value.code == 2 and not (tmp_path / "qs").exists() and message in capsys.readouterr().err


def test_an_interrupted_experiment_reuses_only_runs_that_finished_with_the_same_command(tmp_path, monkeypatch):
    from duet_verl.demo import quickstart

    cfg = QuickstartConfig(out=str(tmp_path), steps=2)
    paths = {"model": "m", "tokenizer": "t", "train": "tr.parquet", "val": "va.parquet"}
    policy = parse_policy("duet@0.5")
    command = [quickstart.sys.executable, "-m", "duet_verl.main", *policy_overrides(policy, cfg, paths, tmp_path)]
    assert quickstart.finished_run(tmp_path, command) is None  # nothing ran yet
    run = {"method": "duet", "budget": 0.5, "seed": 0, "wall_clock_s": 12.0}
    (tmp_path / quickstart.RUN_RECORD).write_text(json.dumps({"command": command, "run": run}))
    assert quickstart.finished_run(tmp_path, command) == run

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(quickstart.subprocess, "Popen", no_training)
    assert quickstart.run_policy(policy, cfg, paths, tmp_path) == run
    other = quickstart.policy_overrides(policy, replace(cfg, steps=3), paths, tmp_path)
    assert quickstart.finished_run(tmp_path, [quickstart.sys.executable, "-m", "duet_verl.main", *other]) is None


def test_summarize_run_splits_duets_own_time_from_its_transfer_queue_io(tmp_path):
    """The trainer logs DUET's own work (plan, update) apart from its TransferQueue reads and writes: the overhead share
    counts only the former, the whole-stage median (for the net share against GRPO's advantage stage) all three."""
    steps = [  # (plan, update, io, step)
        (0.002, 0.004, 0.060, 5.0),
        (0.003, 0.006, 0.070, 6.0),
        (0.001, 0.002, 0.050, 4.0),
    ]
    rows = [
        {
            "step": i + 1,
            "data": {
                "duet/tokens_generated": 100.0,
                "timing_s/duet_plan": plan,
                "timing_s/duet_update": update,
                "timing_s/duet_io": io,
                "timing_s/step": step,
                "timing_s/adv": plan + update + io,
            },
        }
        for i, (plan, update, io, step) in enumerate(steps)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    entry = summarize_run(parse_policy("duet@0.5"), tmp_path, wall=20.0)
    assert entry["duet_overhead_share"] == pytest.approx((0.006 + 0.009 + 0.003) / 15.0)
    assert entry["duet_io_share"] == pytest.approx(0.18 / 15.0)
    assert entry["duet_s_median"] == pytest.approx(0.066)
    assert entry["step_s_median"] == 5.0 and entry["steps"] == 3
    for row in rows:  # a GRPO run logs none of DUET's timings
        for key in ("timing_s/duet_plan", "timing_s/duet_update", "timing_s/duet_io"):
            del row["data"][key]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    entry = summarize_run(parse_policy("grpo@1.0"), tmp_path, wall=20.0)
    assert entry["duet_overhead_share"] is None and entry["duet_io_share"] is None and entry["duet_s_median"] is None
