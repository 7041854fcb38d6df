"""Registration through verl's plug-in entry point, and the estimator through verl's own advantage path."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

CHECK = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
    "print('duet_grpo' in ADV_ESTIMATOR_REGISTRY)\n"
    "from duet_verl.plugin import assert_registered; assert_registered(); print('ok')\n"
)


def run_fresh(env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", CHECK], capture_output=True, text=True, env=env, timeout=300
    )


def test_import_verl_registers_duet_through_the_entry_point():
    out = run_fresh({})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "ok"]


def test_external_modules_fallback_registers_when_entry_points_are_off():
    out = run_fresh({"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "duet_verl.plugin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "ok"]


def test_missing_registration_fails_loudly():
    code = (
        "import verl\n"
        "from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY\n"
        "print('duet_grpo' in ADV_ESTIMATOR_REGISTRY)\n"
        "import duet_verl.plugin as p\n"
        "from verl.workers.rollout.replica import RolloutReplicaRegistry, _load_vllm\n"
        "RolloutReplicaRegistry.register('vllm', _load_vllm)\n"
        "p.assert_registered()\n"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    env.pop("VERL_USE_EXTERNAL_MODULES", None)
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.stdout.split()[0] == "False"  # entry points off: nothing registered by `import verl`
    assert out.returncode != 0 and "not registered in verl" in out.stderr and "DUET vLLM replica" in out.stderr


def test_estimator_through_verls_compute_advantage():
    from omegaconf import OmegaConf
    from verl.protocol import DataProto
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import duet_verl.plugin  # noqa: F401

    rewards = torch.zeros(5, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": torch.ones(5, 3)},
        non_tensors={"uid": np.array(["a", "a", "a", "b", "c"], dtype=object)},
    )
    config = OmegaConf.create({"adv_estimator": "duet_grpo", "norm_adv_by_std_in_grpo": True})
    out = compute_advantage(data, adv_estimator="duet_grpo", config=config)
    adv = out.batch["advantages"]
    scores = np.array([1.0, 0.0, 1.0])
    expected = (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(adv[:3, 0].numpy(), expected, rtol=1e-5)
    assert torch.all(adv[3:] == 0)  # singleton groups: DUET's rule
    torch.testing.assert_close(out.batch["returns"], adv)


def test_generic_estimator_path_scores_like_verl_with_duet_defaults():
    """Through verl's generic path (``config.algorithm`` only) ``duet_grpo`` is GRPO on the unmasked score with
    DUET's default singleton rule: a stopped rollout's reward on its masked end-of-turn token counts."""
    from omegaconf import OmegaConf

    from duet_verl.adapters.estimator import compute_duet_grpo_advantage

    rewards = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # row 0 was stopped
    index = np.array(["x", "x", "x", "y"], dtype=object)
    cfg = OmegaConf.create({"norm_adv_by_std_in_grpo": True})
    adv, _ = compute_duet_grpo_advantage(rewards, mask, index=index, config=cfg)
    scores = np.array([1.0, 0.0, 1.0])
    expected = (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(adv[:3, 0].numpy(), expected, rtol=1e-5)
    assert adv[0, 1] == 0 and torch.all(adv[3] == 0)  # masked position; singleton group
    with pytest.raises(ValueError, match="index"):
        compute_duet_grpo_advantage(rewards, mask)
