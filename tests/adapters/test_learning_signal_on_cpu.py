"""DUET's learning signal through verl's real data path, one outcome kind per test.

One training step of one prompt is built the way verl 0.9.1 builds it: the real config (``duet_trainer.yaml``
composed over verl's ``ppo_trainer``), DUET's ``_next_train_batch`` hook (plan: ``__rollout_n__``, stop rule),
verl's ``AgentLoopWorkerTQ`` (sessions, DUET's agent loop, verl's ``RewardLoopWorker`` with this project's reward
function, ``AgentLoopOutput.as_dict()``, TransferQueue), verl's padding of the batch, the actor's
``old_log_probs`` in TransferQueue, and DUET's ``_compute_advantage`` hook. Only the engine is scripted, so that
the group holds exactly: a correct answer *stopped* after its marker, a correct answer that ended *naturally*, a
marker-less rollout *aborted* by the lottery, one *ε-kept* by it (it then answers correctly), and a *wrong* one.
Then verl's own ``ppo_loss`` is evaluated on what the trainer wrote.
"""

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch
import transfer_queue as tq
from hydra import compose, initialize_config_dir
from tensordict import TensorDict
from transfer_queue import KVBatchMeta
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback
from verl.trainer.ppo.padding_utils import upsample_batch_to_divisible_size
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ
from verl.utils import tensordict_utils as tu
from verl.workers.config import FSDPActorConfig
from verl.workers.utils.losses import ppo_loss

import duet_verl
import duet_verl.demo.reward
from duet_verl.adapters.trainer import DuetPPOTrainerSync
from duet_verl.core.rng import RolloutRandom, rollout_seed
from duet_verl.cpu.overrides import cpu_overrides

from scripted_engine import SURE, UNSURE, InProcessServerManager, ScriptedEngine, ScriptedServer, text_script

RESPONSE = 64  # K1 = 19, K2 = 44, abort lottery at K2 + grace = 50
EPS_ABORT = 0.5  # ε-kept weight 1 / 0.5 = 2
PROMPT_INDEX = 3
PAD_MULTIPLE = 8
OUTCOMES = ("stopped", "natural", "aborted", "eps_kept", "wrong")


def compose_config(model_path: Path):
    overrides = [
        *cpu_overrides(),
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.rollout.n=10",  # budget 0.5 -> 5 rollouts for a cold prompt
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        "data.train_batch_size=1",
        "data.max_prompt_length=64",
        f"data.max_response_length={RESPONSE}",
        f"reward.custom_reward_function.path={duet_verl.demo.reward.__file__}",
        "reward.custom_reward_function.name=compute_score",
        "duet.seed=11",
        "duet.stop.min_tokens=4",
        "duet.stop.grace=6",
        "duet.stop.check_every=2",
        "duet.stop.hysteresis=2",
        "duet.stop.eps_len=0.0",
        f"duet.stop.eps_abort={EPS_ABORT}",
        "duet.stop.threshold_low=0.9",
        "duet.stop.threshold_high=0.9",
        "duet.stop.marker_domains=[math]",
    ]
    with initialize_config_dir(config_dir=str(Path(duet_verl.__file__).parent / "config"), version_base=None):
        return compose(config_name="duet_trainer", overrides=overrides)


def lottery_sessions(config, sessions: int) -> tuple[int, int]:
    """(a session the abort lottery keeps, one it aborts): the first draw of each rollout's own random stream."""
    draws = {}
    for session in range(sessions):
        seed = rollout_seed(config.duet.seed, 1, f"{PROMPT_INDEX}/{session}")
        draws[session] = RolloutRandom(seed).uniform()
    kept = [s for s, u in draws.items() if u < EPS_ABORT]
    aborted = [s for s, u in draws.items() if u >= EPS_ABORT]
    assert kept and aborted, draws  # fixed seeds: holds for duet.seed=11
    return kept[0], aborted[0]


def scripts(tokenizer) -> dict[str, ScriptedEngine]:
    """What each kind of rollout generates (a marker is looked for from token 19 on, every 2 tokens)."""
    before = ("x" * 20, UNSURE)
    return {
        "stopped": ScriptedEngine(text_script(tokenizer, before, ("\\boxed{5}", UNSURE), ("." * 30, SURE))),
        "natural": ScriptedEngine(text_script(tokenizer, before, ("\\boxed{5}", UNSURE), ("ok", UNSURE), eos=True)),
        "aborted": ScriptedEngine(text_script(tokenizer, ("x" * 60, UNSURE))),
        "eps_kept": ScriptedEngine(text_script(tokenizer, ("x" * 52, UNSURE), ("\\boxed{5}", UNSURE), eos=True)),
        "wrong": ScriptedEngine(text_script(tokenizer, before, ("\\boxed{3}", UNSURE), ("no", UNSURE), eos=True)),
    }


class LocalActor:
    """A Ray actor handle's ``handle.method.remote(...)`` contract for an object living in this process."""

    def __init__(self, obj):
        self._obj = obj

    def __getattr__(self, name):
        return SimpleNamespace(remote=getattr(self._obj, name))


class SeedRoutedServer(ScriptedServer):
    """Picks each rollout's script by the seed DUET's agent loop gave it (sessions run concurrently)."""

    def __init__(self, by_seed: dict[int, ScriptedEngine], max_tokens: int):
        super().__init__(engines=[], max_tokens=max_tokens)
        self.by_seed = by_seed

    async def generate(self, prompt_ids, sampling_params, request_id, **kwargs):
        self.engines.append(self.by_seed[sampling_params["extra_args"]["duet"]["monitor"]["seed"]])
        return await super().generate(prompt_ids, sampling_params, request_id, **kwargs)


def dataloader():
    return [
        {
            "raw_prompt": np.array([[{"role": "user", "content": "2+3="}]], dtype=object),
            "index": np.array([PROMPT_INDEX], dtype=object),
            "data_source": np.array(["toy"], dtype=object),
            "reward_model": np.array([{"ground_truth": "5", "style": "rule"}], dtype=object),
            "extra_info": np.array([{"index": PROMPT_INDEX}], dtype=object),
        }
    ]


def session_of_key(key: str) -> int:
    return int(key.split("_")[1])


@pytest.fixture(scope="module")
def step(tiny_assets):
    """Run one step through verl's objects; returns what a test needs to inspect it."""
    ray.init(num_cpus=16, include_dashboard=False, ignore_reinit_error=True)
    tq.init()
    try:
        yield _run_step(tiny_assets)
    finally:
        tq.close()
        ray.shutdown()


def _run_step(tiny_assets):
    path, _, _ = tiny_assets
    config = compose_config(path)
    trainer = DuetPPOTrainerSync.__new__(DuetPPOTrainerSync)
    trainer.config, trainer.trainer_mode, trainer.global_steps = config, "sync", 1
    trainer.checkpoint_callback = build_checkpoint_callback(config)
    trainer.train_dataloader, trainer.train_dataloader_it = dataloader(), None
    trainer._init_duet(config)
    batch = trainer._next_train_batch()  # verl's fetch + DUET's plan
    n = int(tu.get(batch, "__rollout_n__")[0])
    assert n == len(OUTCOMES)

    kept, aborted = lottery_sessions(config, n)
    others = [s for s in range(n) if s not in (kept, aborted)]
    session_kind = dict(zip(others, ("stopped", "natural", "wrong"), strict=True))
    session_kind.update({kept: "eps_kept", aborted: "aborted"})

    tq.kv_batch_put(
        keys=list(batch["uid"]),
        partition_id="train",
        tags=[{"is_prompt": True, "status": "pending", "global_steps": 1}],
    )

    async def rollout():
        """verl's workers, built inside the loop they run on (the reward worker keeps its loop)."""
        by_seed = {}
        reward = LocalActor(RewardLoopWorker(config))
        worker = AgentLoopWorkerTQ.__ray_actor_class__(
            config,
            llm_client=InProcessServerManager(SeedRoutedServer(by_seed, max_tokens=RESPONSE)),
            reward_loop_worker_handles=[reward],
        )
        engines = scripts(worker.tokenizer)
        for session, kind in session_kind.items():
            by_seed[rollout_seed(config.duet.seed, 1, f"{PROMPT_INDEX}/{session}")] = engines[kind]
        await worker.generate_sequences(batch)
        await asyncio.gather(*list(worker.background_tasks))
        return worker.tokenizer

    tokenizer = asyncio.run(rollout())

    # the replay buffer's view of the finished group, then verl's padding to a divisible batch
    listing = tq.kv_list()["train"]
    keys = sorted(k for k, tag in listing.items() if not tag.get("is_prompt", False))
    meta = KVBatchMeta(partition_id="train", keys=keys, tags=[listing[k] for k in keys])
    meta = upsample_batch_to_divisible_size(meta, PAD_MULTIPLE, tokenizer.eos_token_id)

    # the actor's old log-probs (a recomputation in verl): a fixed value per row
    responses = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["responses"])["responses"]
    old = [torch.full_like(r, -0.5, dtype=torch.float32) for r in responses.unbind()]
    tq.kv_batch_put(
        keys=meta.keys,
        partition_id="train",
        fields=TensorDict({"old_log_probs": torch.nested.as_nested_tensor(old, layout=torch.jagged)}, [len(old)]),
    )

    before = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["response_mask", "extra_fields"])
    metrics: dict = {}
    meta = trainer._compute_advantage(meta, metrics)
    fields = ["prompts", "responses", "response_mask", "loss_mask", "rm_scores", "advantages", "old_log_probs"]
    after = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=fields)
    rows = {}
    for i, (key, tag) in enumerate(zip(meta.keys, meta.tags, strict=True)):
        kind = "padding" if tag.get("is_padding") else session_kind[session_of_key(key)]
        rows.setdefault(kind, []).append(i)
    return SimpleNamespace(
        meta=meta, rows=rows, before=before, after=after, metrics=metrics, config=config, tokenizer=tokenizer
    )


def row(step, kind, field, source="after"):
    (i,) = step.rows[kind][:1]
    return getattr(step, source)[field][i]


# scores of the group as the baseline sees them: stopped 1, natural 1, aborted 0 (a failure), ε-kept 1, wrong 0
MEAN, STD = 0.6, math.sqrt(0.3)
A_RIGHT, A_WRONG = (1 - MEAN) / (STD + 1e-6), (0 - MEAN) / (STD + 1e-6)


def test_the_step_holds_every_outcome_kind_and_verl_padding(step):
    assert sorted(step.rows) == sorted([*OUTCOMES, "padding"])
    assert len(step.rows["padding"]) == PAD_MULTIPLE - len(OUTCOMES)
    outcome = {k: row(step, k, "extra_fields", "before")["duet"]["outcome"] for k in OUTCOMES}
    assert outcome == {
        "stopped": "stopped_after_marker",
        "natural": "natural_eos",
        "aborted": "aborted",
        "eps_kept": "eps_kept",
        "wrong": "natural_eos",
    }


def test_stopped_correct_rollout_keeps_its_reward_and_trains_as_a_success(step):
    mask, scores, adv = (row(step, "stopped", f) for f in ("response_mask", "rm_scores", "advantages"))
    # the reward sits on the appended end-of-turn token, which is masked: a masked sum would score it 0
    assert mask[-1] == 0 and mask[:-1].all() and scores[-1] == 1.0
    assert float((scores * mask).sum()) == 0.0  # the audit's bug, seen from the data verl produced
    assert row(step, "stopped", "responses")[-1] == step.tokenizer.eos_token_id
    np.testing.assert_allclose(adv[:-1].numpy(), A_RIGHT, rtol=1e-5)
    assert adv[-1] == 0.0
    assert torch.equal(row(step, "stopped", "loss_mask"), mask)


def test_natural_correct_rollout_gets_the_same_advantage_as_the_stopped_one(step):
    mask, adv = row(step, "natural", "response_mask"), row(step, "natural", "advantages")
    assert mask.all() and row(step, "natural", "rm_scores")[-1] == 1.0
    np.testing.assert_allclose(adv.numpy(), A_RIGHT, rtol=1e-5)


def test_wrong_rollout_is_pushed_down(step):
    adv = row(step, "wrong", "advantages")
    assert row(step, "wrong", "rm_scores").sum() == 0.0
    np.testing.assert_allclose(adv.numpy(), A_WRONG, rtol=1e-5)


def test_eps_kept_rollout_carries_its_importance_weight(step):
    adv = row(step, "eps_kept", "advantages")
    assert row(step, "eps_kept", "response_mask").all() and row(step, "eps_kept", "rm_scores")[-1] == 1.0
    np.testing.assert_allclose(adv.numpy(), A_RIGHT / EPS_ABORT, rtol=1e-5)


def test_aborted_rollout_leaves_every_mask_the_loss_reads(step):
    before = row(step, "aborted", "response_mask", "before")
    assert before.sum() == 50  # partial tokens, up to K2 + grace
    for field in ("response_mask", "loss_mask", "advantages"):
        assert row(step, "aborted", field).abs().sum() == 0, field
    assert row(step, "aborted", "rm_scores").sum() == 0.0


def test_padding_rows_stay_out_of_the_loss(step):
    for i in step.rows["padding"]:
        for field in ("response_mask", "loss_mask", "advantages"):
            assert step.after[field][i].abs().sum() == 0, field


def test_step_metrics(step):
    m = step.metrics
    assert m["duet/score_mismatch"] == 0.0
    assert m["duet/rate_stopped_after_marker"] == pytest.approx(1 / 5)
    assert m["duet/rate_aborted"] == pytest.approx(1 / 5) and m["duet/rate_eps_kept"] == pytest.approx(1 / 5)
    # weights over the four gradient-carrying rows: 1, 1, 1 and 2 (ε-kept)
    assert m["duet/gradient_rows"] == 4 and m["duet/max_weight"] == 2.0
    assert m["duet/ess_fraction"] == pytest.approx(25 / 7 / 4)
    lengths = {k: float(row(step, k, "response_mask").sum()) for k in ("stopped", "natural", "eps_kept", "wrong")}
    mass = {
        "stopped": A_RIGHT * lengths["stopped"],
        "natural": A_RIGHT * lengths["natural"],
        "eps_kept": 2 * A_RIGHT * lengths["eps_kept"],
        "wrong": -A_WRONG * lengths["wrong"],
    }
    assert m["duet/max_row_share"] == pytest.approx(max(mass.values()) / sum(mass.values()), rel=1e-5)
    # DUET's own time in the step, beside verl's timing_s/*: the plan (before rollout) and the update (after), and
    # apart from them the TransferQueue reads and writes of its advantage stage
    assert 0 < m["timing_s/duet_plan"] < 1.0 and 0 < m["timing_s/duet_update"] < 5.0 and 0 < m["timing_s/duet_io"] < 5.0


def _engine_loss(step, indices: list[int], unmasked: tuple[int, ...] = ()) -> float:
    """verl's ``ppo_loss`` on rows ``indices`` of the step, normalised as verl's FSDP/Megatron engines do
    (``batch_num_tokens`` = the ``loss_mask`` sum), with current log-probs that differ from the old ones.
    Rows in ``unmasked`` get back the ``loss_mask`` they had before DUET's hook (a negative control)."""
    keys = [step.meta.keys[i] for i in indices]
    fields = ["prompts", "responses", "response_mask", "loss_mask", "old_log_probs", "advantages"]
    data = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=fields)
    if unmasked:
        masks = [
            step.before["response_mask"][i] if i in unmasked else m
            for i, m in zip(indices, data["loss_mask"].unbind(), strict=True)
        ]
        data["loss_mask"] = torch.nested.as_nested_tensor(masks, layout=torch.jagged)
    log_probs = []
    for prompt, response in zip(data["prompts"].unbind(), data["responses"].unbind(), strict=True):
        length = prompt.numel() + response.numel()
        log_probs.append(-0.5 + 0.01 * torch.arange(length, dtype=torch.float32) % 0.3)
    loss_mask = data["loss_mask"]
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(loss_mask.values().sum()), global_batch_size=len(keys))
    config = FSDPActorConfig(strategy="fsdp", ppo_mini_batch_size=1, ppo_micro_batch_size_per_gpu=1, rollout_n=1)
    model_output = {"log_probs": torch.nested.as_nested_tensor(log_probs, layout=torch.jagged)}
    loss, _ = ppo_loss(config, model_output, data)
    return float(loss)


def test_loss_with_aborted_rows_equals_the_loss_without_them(step):
    everything = list(range(len(step.meta.keys)))
    without_aborted = [i for i in everything if i not in step.rows["aborted"]]
    with_all = _engine_loss(step, everything)
    assert with_all != 0.0
    assert with_all == pytest.approx(_engine_loss(step, without_aborted), rel=1e-6)
    # negative control: had only response_mask been zeroed, the aborted row's 50 tokens would still count in
    # the engines' denominator and shrink the step's gradient
    diluted = _engine_loss(step, everything, unmasked=tuple(step.rows["aborted"]))
    tokens = sum(float(step.after["response_mask"][i].sum()) for i in everything)
    assert diluted == pytest.approx(with_all * tokens / (tokens + 50), rel=1e-6)
