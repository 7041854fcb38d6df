"""Contract tests of :mod:`duet_verl.adapters.compat`: each fails when verl changes the internal it relies on."""

import importlib.metadata
import inspect

from omegaconf import OmegaConf

import duet_verl.plugin  # noqa: F401  (registers DUET's pieces)
from duet_verl.adapters import compat


def test_the_pinned_verl_is_the_installed_one():
    assert importlib.metadata.version("verl") == compat.VERL_VERSION


def test_agent_loop_names_read_verls_registry():
    from verl.experimental.agent_loop.agent_loop import register

    assert "single_turn_agent" in compat.agent_loop_names()
    register("duet_compat_probe")(type("Probe", (), {}))
    assert "duet_compat_probe" in compat.agent_loop_names()


def test_rollout_replica_loader_is_what_verls_get_calls():
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from duet_verl.adapters.vllm_server import DuetvLLMReplica

    loader = compat.rollout_replica_loader("vllm")
    assert loader is not None and RolloutReplicaRegistry.get("vllm") is loader() is DuetvLLMReplica
    assert compat.rollout_replica_loader("no-such-rollout") is None


def test_engine_devices_read_verls_engine_registry(monkeypatch):
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    assert "cpu" in compat.engine_devices("language_model", "fsdp2")  # registered by DUET's CPU backend
    monkeypatch.setenv("VERL_ENGINE_DEVICE", "cpu")  # what verl looks up on a CPU-only node
    assert EngineRegistry.get_engine_cls("language_model", "fsdp2") is FSDPEngineWithLMHead
    assert compat.engine_devices("no-such-model", "fsdp2") == set()


def test_verls_task_runner_still_builds_the_agent_loop_manager_we_reuse():
    from verl.trainer.main_ppo import TaskRunnerV1

    runner_cls = TaskRunnerV1.__ray_actor_class__
    params = [p for p in inspect.signature(runner_cls.init_agent_loop_manager).parameters if p != "_ray_trace_ctx"]
    assert params == ["self"]
    source = inspect.getsource(runner_cls.init_agent_loop_manager)
    assert "self.agent_loop_manager" in source and "self.config" in source and "self.trainer" in source


def test_checkpoint_folder_matches_verls_resume_rule(tmp_path, monkeypatch):
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    (tmp_path / "ckpt" / "global_step_3").mkdir(parents=True)
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("3")
    monkeypatch.chdir(tmp_path)
    auto = OmegaConf.create({"resume_mode": "auto", "default_local_dir": "ckpt", "resume_from_path": None})
    assert compat.checkpoint_folder(auto, 3) == find_latest_ckpt_path(str(tmp_path / "ckpt"))
    explicit = OmegaConf.create({"resume_mode": "resume_path", "resume_from_path": "ckpt/global_step_3"})
    assert compat.checkpoint_folder(explicit, 3) == str(tmp_path / "ckpt" / "global_step_3")
    # verl's own rule, for the record: it parses the step from the folder name
    source = inspect.getsource(
        __import__("verl.trainer.ppo.v1.trainer_base", fromlist=["x"]).PPOTrainer._load_checkpoint
    )
    assert 'split("global_step_")' in source and "find_latest_ckpt_path(checkpoint_folder)" in source


def test_replay_poll_interval_is_the_attribute_verls_buffer_sleeps():
    import pytest
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

    assert inspect.signature(ReplayBuffer.__init__).parameters["poll_interval"].default == 2.0
    assert "time.sleep(self.poll_interval)" in inspect.getsource(ReplayBuffer._wait_for_next_poll)
    buffer = type("Buffer", (), {"poll_interval": 2.0})()
    compat.set_replay_poll_interval(buffer, 0.1)
    assert buffer.poll_interval == 0.1
    with pytest.raises(ValueError, match="poll_interval"):
        compat.set_replay_poll_interval(buffer, 0)
