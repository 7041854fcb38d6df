"""``scripts/gpu_check.sh``'s training check, composed on the CPU: its ``quickstart --device cuda`` command line parses
with the real CLI, builds the same per-policy overrides as a CPU run except the device's own, and composes to a
config that passes DUET's and verl's checks (``DRY_RUN=1``) with ``rollout.name=vllm`` on one GPU."""

import os
import re
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from duet_verl.cli import build_parser, quickstart_config
from duet_verl.cpu.overrides import cpu_overrides, gpu_overrides
from duet_verl.demo.quickstart import device_overrides, parse_policy, policy_overrides

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def gpu_check_quickstart_argv(out: Path) -> list[str]:
    """The arguments gpu_check.sh gives ``duet_verl.cli`` for its training check (``$OUT`` replaced by ``out``)."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if "duet_verl.cli quickstart" in ln and not ln.startswith("#")]
    argv = shlex.split(line.replace('"$OUT', f'"{out}'))
    return argv[argv.index("quickstart") :]


def test_the_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    for check in ("tests_gpu", "bench_vllm", "bench_vllm_sync", "train_duet_2_steps"):  # each under its own limit
        assert re.search(rf"^\s*run {check} \d+ ", text, re.M), check


def test_the_gpu_training_check_composes_on_cpu_with_the_cpu_runs_overrides(tmp_path):
    cfg = quickstart_config(build_parser().parse_args(gpu_check_quickstart_argv(tmp_path)))
    assert (cfg.device, cfg.steps, cfg.policies, cfg.out) == ("cuda", 2, ["duet@0.5"], f"{tmp_path}/train")
    policy = parse_policy(cfg.policies[0])
    paths = {name: str(tmp_path / name) for name in ("model", "train", "val")}
    gpu = policy_overrides(policy, cfg, paths, tmp_path / "run")
    cpu = policy_overrides(policy, replace(cfg, device="cpu"), paths, tmp_path / "run")
    # one function builds both: they differ only by the device's runtime overrides
    assert [o for o in gpu if o not in gpu_overrides()] == [o for o in cpu if o not in cpu_overrides()]
    assert set(gpu_overrides()) <= set(gpu) and not any("VERL_PLATFORM" in o for o in gpu)

    dump = tmp_path / "config.yaml"
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}  # gpu_check.sh unsets it
    env |= {"DRY_RUN": "1", "DRY_RUN_CONFIG": str(dump)}
    out = subprocess.run(
        [sys.executable, "-m", "duet_verl.main", *gpu], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    composed = OmegaConf.load(dump)
    rollout = composed.actor_rollout_ref.rollout
    assert (rollout.name, rollout.enforce_eager, rollout.gpu_memory_utilization) == ("vllm", True, 0.3)
    assert (composed.trainer.n_gpus_per_node, composed.trainer.nnodes, composed.trainer.total_training_steps) == (
        1,
        1,
        2,
    )
    assert composed.duet.enable and composed.duet.budget == 0.5 and composed.algorithm.adv_estimator == "duet_grpo"
    assert composed.actor_rollout_ref.model.path == paths["model"]
    assert "VERL_PLATFORM" not in (composed.ray_kwargs.ray_init.get("runtime_env") or {}).get("env_vars", {})


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, got 'tpu'"):
        device_overrides("tpu")
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["quickstart", "--device", "tpu"])
    assert exit_info.value.code == 2
