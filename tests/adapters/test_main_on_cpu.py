"""``python -m duet_verl.main``: the resolved config prints without starting anything; bad config fails fast."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


def run_main(*overrides, timeout=120):
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "duet_verl.main", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out, time.monotonic() - start


def test_cfg_job_prints_the_resolved_duet_config():
    out, _ = run_main("--cfg", "job", "duet.budget=0.25")
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "adv_estimator: duet_grpo" in text and "default_agent_loop: duet_single_turn" in text
    assert "budget: 0.25" in text and "eps_abort: 0.05" in text and "marker_domains:" in text


BAD_CONFIGS = [
    ("duet.budget=-1", "duet.budget"),
    ("duet.n_min=9", "duet.budget"),  # b * G = 4 < n_min
    ("duet.stop.marker_domains=[poetry]", "duet.stop.marker_domains"),
    ("duet.stop.signal=vibes", "duet.stop.signal"),
    ("algorithm.adv_estimator=grpo", "algorithm.adv_estimator"),
    ("trainer.v1.trainer_mode=colocate_async", "trainer.v1.trainer_mode"),
    ("algorithm.use_kl_in_reward=true", "algorithm.use_kl_in_reward"),
    ("actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent", "default_agent_loop"),
    ("+duet.bogus=1", "duet.bogus"),
    ("actor_rollout_ref.rollout.enable_rollout_routing_replay=true", "enable_rollout_routing_replay"),
    ("+trainer.v1.sampler.poll_interval=0", "trainer.v1.sampler.poll_interval"),
    ("duet.explore.reprobe=0", "duet.explore.reprobe"),
    ("duet.surrogate.pseudo_count=-1", "duet.surrogate.pseudo_count"),
    ("duet.length_cost=cubic", "duet.length_cost"),
    ("algorithm.filter_groups.enable=true", "algorithm.filter_groups.enable"),
    ("duet.policy=arol", "duet.policy"),
    ("duet.policy=arrol duet.arrol.detect_at=100000", "duet.arrol.detect_at"),
    ("duet.greso.p_easy=0", "duet.greso.p_easy"),
    ("duet.vip.min_fraction=2", "duet.vip.min_fraction"),
]


@pytest.mark.parametrize(("override", "key"), BAD_CONFIGS)
def test_bad_config_is_refused_naming_the_key(override, key):
    """The check ``main`` runs before anything starts, on the config hydra composes (in this process: one
    ``python -m duet_verl.main`` per case would cost CI seconds each; the cases below run it for real)."""
    from hydra import compose, initialize_config_dir

    import duet_verl
    from duet_verl.adapters.config_check import ConfigError, check_config

    overrides = [*override.split(), "actor_rollout_ref.rollout.name=vllm"]
    with initialize_config_dir(config_dir=str(Path(duet_verl.__file__).parent / "config"), version_base=None):
        config = compose(config_name="duet_trainer", overrides=overrides)
    with pytest.raises(ConfigError, match=re.escape(key)):
        check_config(config)


@pytest.mark.parametrize(("override", "key"), [BAD_CONFIGS[0]])  # every case runs in-process above; one for real
def test_main_exits_non_zero_quickly_naming_the_key(override, key):
    out, seconds = run_main(*override.split(), "actor_rollout_ref.rollout.name=vllm")
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-2000:])
    assert "invalid configuration" in out.stderr and key in out.stderr
    assert seconds < 60
    assert "ray init" not in out.stdout.lower()


@pytest.mark.parametrize("policy", ["greso"])  # tests/recipes: greso and arrol (uniform, vip: greso's branch)
def test_a_baseline_policy_composes_and_passes_the_checks(policy, monkeypatch):
    """A baseline needs neither DUET's agent loop nor its vLLM server: it runs no stop/abort monitor."""
    monkeypatch.setenv("DRY_RUN", "1")
    overrides = (f"duet.policy={policy}", "actor_rollout_ref.actor.use_dynamic_bsz=true")
    agent_loop = "actor_rollout_ref.rollout.agent.default_agent_loop=single_turn_agent"
    out, _ = run_main(*overrides, "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true", agent_loop)
    assert out.returncode == 0 and "passes the checks" in out.stdout, out.stderr[-2000:]


def test_stop_rule_needs_the_duet_vllm_server():
    out, _ = run_main("actor_rollout_ref.rollout.name=sglang")
    assert out.returncode == 2 and "actor_rollout_ref.rollout.name='sglang'" in out.stderr, out.stderr[-2000:]


def test_cpu_overrides_without_the_platform_override_say_what_to_export():
    import os

    from duet_verl.cpu.overrides import cpu_overrides

    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "duet_verl.main", *cpu_overrides()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 2 and "export VERL_PLATFORM=cpu" in out.stderr, out.stderr[-2000:]
