"""Warm start, score-prompts, report and the quickstart's pure parts, on tiny inputs."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from duet_verl.demo.quickstart import Policy, QuickstartConfig, format_table, parse_policy, policy_overrides
from duet_verl.demo.tasks import make_problems, write_parquet
from duet_verl.demo.warm_start import warm_start
from duet_verl.tools.report import load_series, write_report
from duet_verl.tools.score_prompts import prompt_mean_logprobs, score_prompts


def test_warm_start_lowers_the_loss(tiny_assets):
    from duet_verl.demo.assets import build_tiny_model

    _, tokenizer, _ = tiny_assets
    model = build_tiny_model(tokenizer, seed=1)
    losses = warm_start(model, tokenizer, make_problems(["search"], 64, 0), steps=12, batch_size=8, lr=5e-3)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5


def test_score_prompts_adds_mean_logprob_column(tiny_assets, tmp_path):
    path, tokenizer, model = tiny_assets
    data = write_parquet(make_problems(["arith"], 6, 0), tmp_path / "in.parquet", "train")
    score_prompts(str(path), str(data), str(tmp_path / "out.parquet"), batch_size=4)
    frame = pd.read_parquet(tmp_path / "out.parquet")
    values = frame["duet_prompt_logprob"].tolist()
    assert len(values) == 6 and all(v < 0 and math.isfinite(v) for v in values)
    # same number as one-by-one scoring: batching and padding do not change it
    single = prompt_mean_logprobs(model, tokenizer, [list(frame["prompt"][2])], batch_size=1)[0]
    assert single == pytest.approx(values[2], abs=1e-4)


def test_report_from_file_logger_rows(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {
            "step": s,
            "data": {
                "duet/tokens_generated": 100.0 * s,
                "duet/budget_tokens": 300.0,
                "duet/n_min": 1,
                "duet/n_mean": 4,
                "duet/n_max": 9,
                "duet/rate_aborted": 0.1 * s,
                "critic/score/mean": 0.2,
                "val-core/t/acc/mean@1": 0.5,
                "note": "text",
            },
        }
        for s in (1, 2)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    series = load_series(run)
    assert series["duet/tokens_generated"] == {1: 100.0, 2: 200.0} and "note" not in series
    (path,) = write_report(tmp_path)  # a directory of runs
    assert path.exists() and path.stat().st_size > 10_000
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "missing")


def test_policies_parse_and_map_to_overrides():
    assert parse_policy("duet@0.5") == Policy("duet", 0.5)
    assert parse_policy("grpo") == Policy("grpo", 1.0)
    for bad in ("ppo@0.5", "duet@0", "duet@x"):
        with pytest.raises(ValueError):
            parse_policy(bad)
    cfg = QuickstartConfig(group_size=8)
    paths = {"train": "t", "val": "v", "model": "m"}
    from pathlib import Path

    grpo_half = policy_overrides(Policy("grpo", 0.5), cfg, paths, Path("/r"))
    assert "actor_rollout_ref.rollout.n=4" in grpo_half and "duet.enable=false" in grpo_half
    duet = policy_overrides(Policy("duet", 0.5), cfg, paths, Path("/r"))
    assert "actor_rollout_ref.rollout.n=8" in duet and "duet.budget=0.5" in duet and "duet.stop.enable=true" in duet
    alloc = policy_overrides(Policy("duet-alloc", 0.5), cfg, paths, Path("/r"))
    assert "duet.stop.enable=false" in alloc


def test_table_formats_missing_values():
    results = [
        {
            "policy": "grpo@1",
            "tokens_total": 1000.0,
            "initial_accuracy": 0.1,
            "final_accuracy": 0.3,
            "wall_clock_s": 100.0,
            "abort_rate": None,
            "marker_stop_rate": None,
        },
        {
            "policy": "duet@0.5",
            "tokens_total": 500.0,
            "initial_accuracy": 0.1,
            "final_accuracy": None,
            "wall_clock_s": 90.0,
            "abort_rate": 0.25,
            "marker_stop_rate": 0.1,
        },
    ]
    table = format_table(results)
    assert "0.50" in table and "25%" in table and table.count("\n") == 3
