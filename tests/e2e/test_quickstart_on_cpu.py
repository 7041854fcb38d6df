"""End to end on CPU: the quickstart's short version through verl's own V1 trainer (a few minutes)."""

import json
import subprocess
import sys


def test_short_quickstart_trains_duet_and_grpo_through_verl(tmp_path):
    out = tmp_path / "qs"
    cmd = [
        sys.executable,
        "-m",
        "duet_verl.cli",
        "quickstart",
        "--out",
        str(out),
        "--steps",
        "2",
        "--policies",
        "grpo@1.0,duet@0.5",
        "--warm-start-steps",
        "20",
        "--prompts-per-step",
        "4",
        "--group-size",
        "4",
        "--evals",
        "1",
        "--heldout-problems",
        "8",  # each evaluation scores 32 samples instead of 1,024: what is checked is that evaluations run
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert "[quickstart] duet@0.5 seed 0: step 2/2" in proc.stdout  # live progress
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rollout_engine"] == "vllm" and summary["vllm_version"] == "0.24.0"  # the real engine on CPU
    by_policy = {r["policy"]: r for r in summary["results"]}
    grpo, duet = by_policy["grpo@1"], by_policy["duet@0.5"]
    assert grpo["steps"] == duet["steps"] == 2
    assert 0 < duet["tokens_total"] < 0.8 * grpo["tokens_total"]  # half the budget: clearly fewer tokens
    assert duet["abort_rate"] is not None and duet["final_accuracy"] is not None
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 10_000
    rows = [json.loads(line) for line in (out / "duet@0.5" / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*(r["data"] for r in rows))
    for key in (
        "duet/tokens_generated",
        "duet/budget_tokens",
        "duet/n_mean",
        "duet/lambda",
        "duet/rate_aborted",
        "duet/rate_stopped_after_marker",
        "duet/ess",
        "duet/max_weight",
        "duet/surrogate_calibration",
        "duet/score_mismatch",
        "duet/max_row_share",
        "actor/pg_loss",
    ):
        assert key in logged, key
    steps = [r["data"] for r in rows if "duet/score_mismatch" in r["data"]]
    assert len(steps) == 2 and all(d["duet/score_mismatch"] == 0 for d in steps)  # DUET scores as verl does
    assert duet["score_mismatch"] == 0
    assert any(k.startswith("val-core/duet_toy_arith/acc/mean@") for k in logged)
