"""Every paper recipe, for every method and engine, composes its full hydra config with ``DRY_RUN=1`` (no GPU, no
data) and passes DUET's and verl's checks, with the values the recipe promises; bad values fail naming the key."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).parents[2]
FAMILIES = {
    "qwen3_1p7b": ("Qwen/Qwen3-1.7B-Base", 1),
    "qwen3_4b": ("Qwen/Qwen3-4B-Base", 2),
    "llama3p2_3b": ("meta-llama/Llama-3.2-3B-Instruct", 2),
}  # recipe -> (model, Megatron tensor-parallel size)
METHODS = ("duet", "grpo", "dapo")
# duet.policy: the same overrides in every family; uniform, greso and vip share one branch of common.sh (greso stands
# for the three), arrol has its own
BASELINE_POLICIES = ("greso", "arrol")
ENGINES = ("fsdp", "megatron")
BUDGETS = ("1.0", "0.5", "0.25")
VAL_SETS = ("math500", "aime2024", "gsm8k", "humaneval", "gpqa_diamond")
CASES = [
    (list(FAMILIES)[(j + k) % len(FAMILIES)], method, engine, BUDGETS[(j + 2 * k) % len(BUDGETS)])
    for j, method in enumerate(METHODS)
    for k, engine in enumerate(ENGINES)
] + [
    (list(FAMILIES)[j % len(FAMILIES)], policy, ENGINES[j % len(ENGINES)], BUDGETS[(j + 1) % len(BUDGETS)])
    for j, policy in enumerate(BASELINE_POLICIES)
]  # each method with both engines, each baseline policy (the same overrides as DUET's, engine aside) with one of
# them in turn; the families and budgets rotate


def run_recipe(recipe: str, *overrides: str, dry_run: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``bash recipes/<recipe>.sh overrides...`` with this interpreter first on the PATH and ``env`` added."""
    environ = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}",
        **({"DRY_RUN": "1"} if dry_run else {}),
        **env,
    }
    if not dry_run:
        environ.pop("DRY_RUN", None)
    return subprocess.run(
        ["bash", str(ROOT / "recipes" / f"{recipe}.sh"), *overrides],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


def test_the_recipe_files_are_the_families_plus_the_cpu_one():
    assert sorted(p.stem for p in (ROOT / "recipes").glob("*.sh")) == sorted([*FAMILIES, "common", "run_duet_tiny_cpu"])


@pytest.mark.parametrize(("family", "method", "engine", "budget"), CASES, ids=["-".join(c) for c in CASES])
def test_dry_run_composes_the_paper_config(tmp_path, family, method, engine, budget):
    model, megatron_tp = FAMILIES[family]
    dump = tmp_path / "config.yaml"
    env = dict(METHOD=method, ENGINE=engine, BUDGET=budget, NNODES="2", NGPUS_PER_NODE="4", DATA_DIR=str(tmp_path))
    out = run_recipe(family, DRY_RUN_CONFIG=str(dump), **env)
    assert out.returncode == 0, (out.stdout[-2000:], out.stderr[-3000:])
    assert f"DRY_RUN=1: {method}_b{budget}_{engine}_{Path(model).name}: the configuration composes" in out.stdout
    cfg = OmegaConf.load(dump)
    arr, actor, rollout = cfg.actor_rollout_ref, cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    # SPEC §5, the same for every method and engine
    assert arr.model.path == model
    assert cfg.data.train_files == f"{tmp_path}/math_train.parquet"
    assert list(cfg.data.val_files) == [f"{tmp_path}/{name}.parquet" for name in VAL_SETS]
    assert (cfg.data.train_batch_size, cfg.data.max_prompt_length, cfg.data.max_response_length) == (128, 512, 3072)
    assert actor.ppo_mini_batch_size == 64 and actor.optim.lr == 3e-6 and actor.optim.lr_warmup_steps_ratio == 0.1
    assert actor.clip_ratio == 0.2 and actor.loss_agg_mode == "token-mean"
    assert actor.use_kl_loss and actor.kl_loss_coef == 0.001 and actor.kl_loss_type == "low_var_kl"
    assert (rollout.name, rollout.temperature, rollout.top_p) == ("vllm", 0.9, 0.95)
    assert rollout.val_kwargs.n == 4 and rollout.val_kwargs.do_sample
    assert cfg.trainer.total_epochs == 4 and (cfg.trainer.nnodes, cfg.trainer.n_gpus_per_node) == (2, 4)
    assert cfg.reward.custom_reward_function.path.endswith("duet_verl/verifiers/__init__.py")
    assert cfg.reward.custom_reward_function.name == "compute_score"
    # engine-specific keys
    if engine == "megatron":
        assert actor.strategy == "megatron" and actor.optim.lr_decay_style == "cosine"
        assert actor.megatron.tensor_model_parallel_size == megatron_tp == arr.ref.megatron.tensor_model_parallel_size
    else:
        assert actor.strategy == "fsdp2" and actor.optim.lr_scheduler_type == "cosine"
        assert "megatron" not in actor
    # the method and its budget
    if method == "duet":
        assert cfg.duet.enable and cfg.duet.budget == float(budget) and rollout.n == 8
        assert cfg.algorithm.adv_estimator == "duet_grpo" and rollout.agent.default_agent_loop == "duet_single_turn"
        assert cfg.duet.policy == "duet"
    elif method in BASELINE_POLICIES:
        assert cfg.duet.enable and cfg.duet.policy == method and cfg.duet.budget == float(budget) and rollout.n == 8
        assert cfg.algorithm.adv_estimator == "duet_grpo" and not cfg.algorithm.filter_groups.enable
        if method == "arrol":  # its probe travels to the server through DUET's agent loop; the paper's settings
            assert rollout.agent.default_agent_loop == "duet_single_turn" and cfg.duet.stop.enable
            assert (cfg.duet.arrol.detect_at, cfg.duet.arrol.keep, cfg.duet.arrol.target) == (512, 0.5, 0.5)
    else:
        assert not cfg.duet.enable and cfg.algorithm.adv_estimator == "grpo"
        assert rollout.n == {"1.0": 8, "0.5": 4, "0.25": 2}[budget]  # round(b * G)
        assert cfg.algorithm.filter_groups.enable == (method == "dapo")
        if method == "dapo":
            assert cfg.algorithm.filter_groups.metric == "reward"


def test_the_environment_picks_group_size_val_sets_and_checkpoint_dir(tmp_path):
    dump = tmp_path / "config.yaml"
    env = dict(METHOD="grpo", BUDGET="0.5", GROUP="16", VAL_SETS="math500 aime2024", CKPT_DIR="/ckpt", EXPERIMENT="x")
    out = run_recipe("qwen3_1p7b", "trainer.test_freq=7", DATA_DIR=str(tmp_path), DRY_RUN_CONFIG=str(dump), **env)
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = OmegaConf.load(dump)
    assert cfg.actor_rollout_ref.rollout.n == 8  # round(0.5 * 16)
    assert list(cfg.data.val_files) == [f"{tmp_path}/math500.parquet", f"{tmp_path}/aime2024.parquet"]
    assert cfg.trainer.default_local_dir == "/ckpt/duet_verl/x" and cfg.trainer.test_freq == 7  # caller's override wins
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH == "/ckpt/duet_verl/x/metrics.jsonl"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("ENGINE", "deepspeed"), ("METHOD", "ppo"), ("BUDGET", "1.5"), ("BUDGET", "half"), ("NNODES", "0")],
)
def test_a_bad_environment_value_fails_naming_the_variable(variable, value):
    out = run_recipe("qwen3_4b", **{variable: value})
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-1000:])
    assert f"{variable}={value}" in out.stderr


@pytest.mark.parametrize("engine", ENGINES)
def test_a_bad_override_fails_the_dry_run_naming_the_key(engine):
    out = run_recipe("llama3p2_3b", "duet.budget=2", ENGINE=engine)
    assert out.returncode == 2 and "duet.budget" in out.stderr, out.stderr[-2000:]


def test_duet_refuses_dapo_dynamic_sampling_before_ray_starts():
    out = run_recipe("qwen3_1p7b", "algorithm.filter_groups.enable=true", METHOD="duet")
    assert out.returncode == 2 and "algorithm.filter_groups.enable" in out.stderr, out.stderr[-2000:]


def test_megatron_context_parallelism_is_refused_for_duet():
    out = run_recipe("qwen3_1p7b", "actor_rollout_ref.actor.megatron.context_parallel_size=2", ENGINE="megatron")
    assert out.returncode == 2 and "context_parallel_size" in out.stderr, out.stderr[-2000:]


def test_a_real_run_without_the_prepared_data_stops_before_python_naming_the_file(tmp_path):
    out = run_recipe("qwen3_1p7b", dry_run=False, DATA_DIR=str(tmp_path))
    assert out.returncode == 2
    assert f"{tmp_path}/math_train.parquet is missing" in out.stderr and "prepare-data" in out.stderr


def test_a_real_run_without_the_reward_module_stops_naming_it(tmp_path):
    for name in ("math_train", *VAL_SETS):
        (tmp_path / f"{name}.parquet").touch()
    missing = tmp_path / "no_verifiers.py"
    out = run_recipe("qwen3_1p7b", dry_run=False, DATA_DIR=str(tmp_path), REWARD_FILE=str(missing))
    assert out.returncode == 2 and f"REWARD_FILE={missing} is missing" in out.stderr, out.stderr[-2000:]
