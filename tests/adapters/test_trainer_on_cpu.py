"""DUET trainer hooks on a stub trainer (verl's ``__new__`` pattern) against a real TransferQueue."""

import json

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.utils.tensordict_utils import list_of_dict_to_tensordict

from duet_verl.adapters.trainer import DUET_STATE_FILE, DuetPPOTrainerSync, prompt_ids_of
from duet_verl.core.advantage import grpo_group_advantage
from duet_verl.core.monitor import Outcome
from duet_verl.core.protocol import PromptStopRule, RolloutReport

G, CAP = 4, 16


@pytest.fixture(scope="module", autouse=True)
def transfer_queue():
    ray.init(num_cpus=16, include_dashboard=False, ignore_reinit_error=True)
    tq.init()
    yield
    tq.close()
    ray.shutdown()


def make_trainer(tmp_path, duet=None, estimator="duet_grpo"):
    config = OmegaConf.create(
        {
            "algorithm": {"adv_estimator": estimator, "use_kl_in_reward": False, "norm_adv_by_std_in_grpo": True},
            "actor_rollout_ref": {"rollout": {"n": G}},
            "data": {"max_response_length": CAP, "train_batch_size": 4, "gen_batch_size": None},
            "trainer": {"default_local_dir": str(tmp_path), "resume_mode": "auto", "resume_from_path": None},
            "duet": duet or {"stop": {"min_tokens": 2}},
        }
    )
    trainer = DuetPPOTrainerSync.__new__(DuetPPOTrainerSync)
    trainer.config = config
    trainer.trainer_mode = "sync"
    trainer.global_steps = 1
    trainer.checkpoint_callback = build_checkpoint_callback(config)  # what verl's __init__ sets
    trainer._init_duet(config)
    return trainer


def dataloader(batches, sources=None):
    out = []
    for rows in batches:
        out.append(
            {
                "raw_prompt": np.array([[{"role": "user", "content": f"q{i}"}] for i in rows], dtype=object),
                "index": np.array(rows, dtype=object),
                "data_source": np.array(sources or ["toy"] * len(rows), dtype=object),
                "duet_prompt_logprob": np.array([-1.0 - 0.1 * i for i in rows], dtype=object),
            }
        )
    return out


def test_next_train_batch_attaches_counts_propensities_and_rules(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader([[0, 1, 2, 3]]), None
    batch = trainer._next_train_batch()
    n = list(tu.get(batch, "__rollout_n__"))
    assert n == [2, 2, 2, 2]  # cold start: uniform, budget 0.5 * G
    assert list(tu.get(batch, "duet_prompt_id")) == ["toy/0", "toy/1", "toy/2", "toy/3"]
    rules = list(tu.get(batch, "duet_stop_rule"))
    rule = PromptStopRule.from_dict(rules[0])  # the protocol's prompt-level message
    assert rule.monitor.k1 == int(0.3 * CAP) and rule.step == 1 and rule.top_logprobs == 2
    assert trainer.duet.last_plan.metrics()["duet/n_total"] == 8
    assert trainer._features_of(batch)[2, 0] == pytest.approx(-1.2)
    # the per-sample dict verl's AgentLoopWorkerTQ builds: plain python values
    assert isinstance(batch["__rollout_n__"][0].data if hasattr(batch["__rollout_n__"][0], "data") else n[0], int)


def test_stop_disabled_sends_no_rules_and_disabled_duet_changes_nothing(tmp_path):
    trainer = make_trainer(tmp_path, duet={"stop": {"enable": False}})
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader([[0, 1]]), None
    trainer.config.data.train_batch_size = 2
    assert "duet_stop_rule" not in trainer._next_train_batch().keys()
    trainer = make_trainer(tmp_path, duet={"enable": False})
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader([[0, 1]]), None
    trainer.config.data.train_batch_size = 2
    assert "__rollout_n__" not in trainer._next_train_batch().keys()


@pytest.mark.parametrize("by_source", [True, False])
def test_stop_rules_look_for_the_markers_of_their_data_source(tmp_path, by_source):
    trainer = make_trainer(tmp_path, duet={"stop": {"min_tokens": 2, "markers_by_data_source": by_source}})
    sources = ["math500", "humaneval", "toy", "gpqa_diamond"]
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader([[0, 1, 2, 3]], sources), None
    rules = [PromptStopRule.from_dict(r) for r in tu.get(trainer._next_train_batch(), "duet_stop_rule")]
    domains = [rule.monitor.markers.domains for rule in rules]
    configured = ("math", "generic")  # duet.stop.marker_domains' default
    if by_source:
        assert domains == [("math",), ("code",), configured, ("math",)]
    else:
        assert domains == [configured] * 4
    assert all(rule.monitor.markers.regexes == () for rule in rules)


def test_a_baseline_policy_plans_counts_without_stop_rules(tmp_path):
    trainer = make_trainer(tmp_path, duet={"policy": "greso"})
    trainer.duet.policy.streaks = {"toy/1": (3, "hard")}  # rolled out with probability 0.5**3: skipped at step 1
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader([[0, 1, 2, 3]]), None
    batch = trainer._next_train_batch()
    assert list(tu.get(batch, "__rollout_n__")) == [3, 0, 3, 2]  # toy/1's share of the 8 rollouts goes to the others
    assert list(tu.get(batch, "duet_p_pre")) == [1.0] * 4 and "duet_stop_rule" not in batch.keys()


def test_prompt_ids_need_an_index():
    with pytest.raises(ValueError, match="extra_info.index"):
        prompt_ids_of(TensorDict({}, batch_size=[0]))


def _trajectory(uid, pid, p_pre, length, reward, outcome, logprob=-0.5):
    """One TransferQueue row as verl writes it: reward on the last position; a stopped rollout's last position is
    its synthetic end-of-turn token, masked out by DUET's agent loop."""
    mask = torch.ones(length, dtype=torch.int64)
    if outcome == "stopped_after_marker":
        mask[-1] = 0
    scores = torch.zeros(length)
    scores[-1] = reward
    return {
        "uid": uid,
        "duet_prompt_id": pid,
        "duet_p_pre": p_pre,
        "response_mask": mask,
        "loss_mask": mask.clone(),
        "rm_scores": scores,
        "old_log_probs": torch.full((length,), logprob),
        "extra_fields": {"duet": RolloutReport(Outcome(outcome), length=length, monitor_ns=1000 * length).to_dict()},
    }


def put_step(rows, tags, partition="train"):
    keys = [f"{r['uid']}_{i}_0" for i, r in enumerate(rows)]
    return tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(rows), tags=tags)


def test_compute_advantage_weights_masks_and_learns(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.duet.plan(["toy/a", "toy/b"], step=1)
    budget = trainer.duet.last_plan.allocation.budget
    rows = [
        _trajectory("A", "toy/a", 0.5, 5, 1.0, "natural_eos"),
        _trajectory("A", "toy/a", 0.5, 6, 1.0, "stopped_after_marker"),
        _trajectory("A", "toy/a", 0.5, 8, 0.0, "aborted"),
        _trajectory("A", "toy/a", 0.5, 7, 1.0, "eps_kept"),
        _trajectory("B", "toy/b", 1.0, 4, 1.0, "natural_eos"),  # singleton group
        _trajectory("pad1", "toy/a", 0.5, 5, 0.0, "natural_eos"),  # verl padding row
    ]
    tags = [{"is_padding": False}] * 5 + [{"is_padding": True}]
    meta = put_step(rows, tags)
    metrics = {}
    trainer._compute_advantage(meta, metrics)
    fields = ["advantages", "response_mask", "loss_mask"]
    out = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=fields)
    adv = out["advantages"].to_padded_tensor(padding=0.0)
    mask = out["response_mask"].to_padded_tensor(padding=0)
    # group A: the stopped row keeps its reward; the aborted row counts as a failure in the baseline only
    base = grpo_group_advantage(torch.tensor([1.0, 1.0, 0.0, 1.0]), [0, 0, 0, 0])
    expected_scalar = [2.0 * base[0], 2.0 * base[1], 0.0, 2.0 * 20.0 * base[3], 0.0, 0.0]
    for row, value in enumerate(expected_scalar):
        row_mask = rows[row]["response_mask"].to(torch.float32)
        length = row_mask.numel()
        assert adv[row, :length] == pytest.approx(float(value) * row_mask, abs=1e-5), row
    assert mask[2].sum() == 0 and mask[5].sum() == 0 and mask[0].sum() == 5 and mask[1].sum() == 5
    assert torch.equal(out["loss_mask"].to_padded_tensor(padding=0), mask)
    assert metrics["duet/score_mismatch"] == 0.0
    assert metrics["duet/rate_aborted"] == pytest.approx(1 / 5) and metrics["duet/rate_eps_kept"] == pytest.approx(
        1 / 5
    )
    assert metrics["duet/max_weight"] == pytest.approx(40.0) and metrics["duet/tokens_generated"] == 29
    # generated tokens: the stopped row's appended end-of-turn token was not generated (masked out)
    assert metrics["duet/tokens_vs_budget"] == pytest.approx(29 / budget)
    assert metrics["duet/n_total"] == trainer.duet.last_plan.metrics()["duet/n_total"]  # the plan's metrics too
    assert metrics["duet/monitor_ns_per_token"] == pytest.approx(30000 / 29) and metrics["duet/abort_failed"] == 0.0
    # the surrogate learnt prompt a (2+ kept rollouts) and the kept lengths (aborted excluded)
    assert trainer.duet.surrogate.observations("toy/a") == 1 and trainer.duet.surrogate.observations("toy/b") == 0
    assert trainer.duet.plan(["toy/a"], step=2).lengths[0] == pytest.approx((5 + 5 + 7) / 3)
    tq.kv_clear(keys=meta.keys, partition_id="train")


def test_other_estimators_go_to_verl_and_tokens_are_counted_alike(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, estimator="grpo")
    called = []

    def verl_advantage(self, batch, metrics):
        called.append(batch)
        return batch

    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", verl_advantage)
    rows = [
        _trajectory("A", "toy/a", 1.0, 5, 1.0, "natural_eos"),
        _trajectory("A", "toy/a", 1.0, 7, 0.0, "natural_eos"),
        _trajectory("pad", "toy/a", 1.0, 9, 0.0, "natural_eos"),
    ]
    meta = put_step(rows, [{"is_padding": False}, {"is_padding": False}, {"is_padding": True}])
    metrics = {}
    assert trainer._compute_advantage(meta, metrics) is meta and called == [meta]
    assert metrics == {"duet/tokens_generated": 12.0}
    tq.kv_clear(keys=meta.keys, partition_id="train")


def test_checkpoint_round_trip(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)
    trainer.global_steps = 5
    trainer.duet.surrogate.update(["toy/x"], np.array([2.5]), [[7]])
    # verl calls its checkpoint callback with the folder it saved; DUET's wraps the user's callback
    trainer.checkpoint_callback.on_save(trainer, global_step=5, checkpoint_dir=str(tmp_path / "global_step_5"))
    saved = json.loads((tmp_path / "global_step_5" / DUET_STATE_FILE).read_text())
    assert saved == json.loads(json.dumps(trainer.duet.state_dict()))

    def fake_load(self):
        self.global_steps = 5

    monkeypatch.setattr(PPOTrainerSync, "_load_checkpoint", fake_load)
    fresh = make_trainer(tmp_path)
    fresh._load_checkpoint()
    assert fresh.duet.state_dict() == trainer.duet.state_dict()
    # a checkpoint without DUET state: warn and start fresh
    (tmp_path / "global_step_5" / DUET_STATE_FILE).unlink()
    other = make_trainer(tmp_path)
    other._load_checkpoint()
    assert len(other.duet.surrogate) == 0
