"""``duet-verl bench`` (and ``--vllm``, the real engine on this CPU): progress lines, then one JSON object."""

import json
import subprocess
import sys

import pytest


def bench(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "duet_verl.cli", "bench", "--repeats", "1", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_with_vllm_prints_every_key_last():
    out = bench("--vllm", "--requests", "4", "--max-tokens", "48", "--rounds", "1", "--async-scheduling", "on")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert any(line.startswith("[bench --vllm] round 1/1") for line in lines)  # progress while it runs
    for key in ("alloc_us_m8192", "monitor_ns_per_token", "monitor_speedup"):  # the micro-benchmarks stay
        assert result[key] > 0, key
    assert result["device"].startswith("cpu") and result["requests"] == 4 and result["max_tokens"] == 48
    for key in ("vllm_plain_tok_s", "vllm_logprobs2_tok_s", "vllm_logprobs2_flat_tok_s", "vllm_duet_tok_s"):
        assert result[key] > 0, key
    plain = result["vllm_plain_tok_s"]
    assert result["vllm_throughput_ratio"] == pytest.approx(result["vllm_duet_tok_s"] / plain, 1e-3)
    assert len(result["vllm_throughput_ratio_rounds"]) == 1 and result["vllm_throughput_ratio_rounds"][0] > 0
    assert result["vllm_logprobs2_ratio"] == pytest.approx(result["vllm_logprobs2_tok_s"] / plain, 1e-3)
    assert result["vllm_logprobs2_flat_ratio"] == pytest.approx(result["vllm_logprobs2_flat_tok_s"] / plain, 1e-3)
    assert result["vllm_firing_tok_s"] > 0
    # the monitor ran on every DUET request: its own time live (wall-clock), and on the last round's streams replayed
    # with the engine idle (the replay returned exactly the rollouts of the live run, or the bench would have failed)
    for key in ("server_monitor_ns_per_token", "server_monitor_wall_ns_per_token"):
        assert result[key] > 0, key
        assert set(result[f"{key}_by_variant"]) == {"duet", "duet_marker", "duet_firing"}
    assert any(line.startswith("[bench --vllm] replayed the last round's DUET streams") for line in lines)
    low, high = result["vllm_firing_lengths"]
    assert low == high == 48 // 2 + 8  # every firing rollout is cut at its decision, K2 + grace, none at the cap
    # the never-firing rollouts ran lean in one engine request each; those with a marker were continued once from
    # their first check and still returned exactly their cap
    assert result["vllm_segments"] == {"duet": 1.0, "duet_marker": 2.0, "duet_firing": 1.0}
    assert result["vllm_duet_marker_lengths"] == [48, 48]
    assert result["vllm_duet_marker_ratio"] == pytest.approx(result["vllm_duet_marker_tok_s"] / plain, 1e-3)
    assert result["in_engine_signal_us_per_step"] > 0 and result["in_engine_signal_ns_per_token"] > 0
    assert result["vllm_async_scheduling"] is False  # asked for, but vLLM's CPU platform turns it off


@pytest.mark.parametrize("flag", ["--rounds", "--requests", "--max-tokens"])
def test_bench_rejects_non_positive_sizes(flag):
    out = bench("--vllm", flag, "0", timeout=60)
    assert out.returncode == 2 and f"{flag} must be >= 1" in out.stderr


@pytest.mark.parametrize(
    ("command", "flag"),
    [("quickstart", "--seeds"), ("quickstart", "--steps"), ("quickstart", "--heldout-problems"), ("simulate", "--cap")],
)
def test_other_commands_reject_non_positive_sizes(command, flag):
    out = subprocess.run(
        [sys.executable, "-m", "duet_verl.cli", command, flag, "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and f"{flag} must be >= 1" in out.stderr
