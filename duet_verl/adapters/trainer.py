"""DUET's V1 trainer: verl's ``PPOTrainerSync`` with three hooks and its checkpoint callback.

* ``_next_train_batch``: plan the batch (surrogate → allocation → stop rules) and attach, per prompt,
  ``__rollout_n__`` (read natively by verl's ``AgentLoopWorkerTQ``), ``duet_p_pre``, ``duet_prompt_id`` and
  ``duet_stop_rule`` (a :class:`~duet_verl.core.protocol.PromptStopRule`, read by the ``duet_single_turn`` agent
  loop; its answer markers follow the prompt's ``data_source``, see :func:`rules_following_data_sources`).
  Validation batches never pass here.
* ``_compute_advantage``: with ``algorithm.adv_estimator=duet_grpo``, DUET's weighted, abort-masked advantage
  (see :meth:`_duet_advantage`); otherwise verl's, with the same token accounting.
* ``_load_checkpoint``, and verl's checkpoint callback wrapped: DUET's state rides along in
  ``global_step_N/duet_state.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from verl.trainer.ppo.checkpoint_callback import CheckpointCallback
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from duet_verl.adapters.compat import checkpoint_folder, set_replay_poll_interval
from duet_verl.adapters.config_check import duet_settings_from_config
from duet_verl.adapters.estimator import DUET_ESTIMATOR
from duet_verl.core.controller import IO_TIMING, PLAN_TIMING, UPDATE_TIMING, DuetController, StepObservation
from duet_verl.core.monitor import DROPPED_OUTCOMES
from duet_verl.core.protocol import RULE_COLUMN, WIRE_KEY, PromptStopRule, RolloutReport
from duet_verl.verifiers.registry import marker_domains_for

__all__ = [
    "DUET_STATE_FILE",
    "LOSS_MASK_FIELDS",
    "DuetPPOTrainerSync",
    "prompt_ids_of",
    "rules_following_data_sources",
    "sequence_scores",
]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

DUET_STATE_FILE = "duet_state.json"
# The masks verl 0.9.1 reads for the policy loss: ``response_mask`` in ``ppo_loss`` (numerator of token-mean),
# ``loss_mask`` in the FSDP and Megatron engines' ``forward_backward_batch`` (its denominator, batch_num_tokens).
LOSS_MASK_FIELDS = ("response_mask", "loss_mask")
_STEP_FIELDS = ["uid", "duet_prompt_id", "duet_p_pre", *LOSS_MASK_FIELDS, "rm_scores", "old_log_probs", "extra_fields"]


def prompt_ids_of(batch: TensorDict) -> list[str]:
    """Stable prompt ids: the dataset's ``index`` (``extra_info.index``), prefixed by ``data_source`` if present."""
    if "index" not in batch.keys():
        raise ValueError("DUET needs a stable prompt id: the dataset must provide extra_info.index")
    index = [str(i) for i in tu.get(batch, "index")]
    if "data_source" in batch.keys():
        sources = [str(s) for s in tu.get(batch, "data_source")]
        return [f"{s}/{i}" for s, i in zip(sources, index, strict=True)]
    return index


def rules_following_data_sources(rules: Sequence[PromptStopRule], sources: Sequence[Any]) -> list[PromptStopRule]:
    """Each prompt's stop rule with the answer-marker domain of its ``data_source`` (``duet_verl.verifiers``);
    a rule of a source the verifiers do not know keeps the configured ``duet.stop.marker_domains``."""
    out = []
    for rule, source in zip(rules, sources, strict=True):
        domains = marker_domains_for(str(source))
        out.append(rule.with_marker_domains(domains) if domains else rule)
    return out


def sequence_scores(rm_scores: torch.Tensor) -> torch.Tensor:
    """verl's sequence score of each row of a jagged ``rm_scores``: every token's reward, no mask applied."""
    return torch.stack([row.to(torch.float64).sum() for row in rm_scores.unbind()])


def generated_tokens(response_mask: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    """Generated tokens per real rollout (``response_mask`` as the rollout wrote it: an appended end-of-turn token
    is masked, hence not counted). The one token count of every method's ``duet/tokens_generated``."""
    return response_mask.to_padded_tensor(padding=0).sum(-1)[~padding]


def padding_rows(batch) -> torch.Tensor:
    """verl's padding rows of a step (``is_padding`` tag)."""
    return torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags], dtype=torch.bool)


@dataclass
class _StepRollouts:
    """A step's rollouts as read from TransferQueue (padding rows included, flagged)."""

    data: TensorDict  # the nested fields of _STEP_FIELDS
    padding: torch.Tensor
    reports: list[RolloutReport]

    @classmethod
    def read(cls, batch) -> _StepRollouts:
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_STEP_FIELDS)
        extra = list(tu.get(data, "extra_fields")) if "extra_fields" in data.keys() else [{}] * len(batch)
        reports = [
            RolloutReport.from_dict(e[WIRE_KEY]) if e and WIRE_KEY in e else RolloutReport.unmonitored() for e in extra
        ]
        return cls(data, padding_rows(batch), reports)

    def column(self, key: str, default: Any) -> list[Any]:
        if key not in self.data.keys():
            return [default] * len(self.reports)
        return [default if v is None else v for v in tu.get(self.data, key)]

    def padded(self, key: str) -> torch.Tensor:
        return self.data[key].to_padded_tensor(padding=0)


class _DuetCheckpointCallback(CheckpointCallback):
    """verl's checkpoint callback hook: writes DUET's state into each ``global_step_N`` folder verl saved, then
    calls the user's own callback (``trainer.checkpoint_callback_class``)."""

    def __init__(self, inner: CheckpointCallback, controller: DuetController):
        super().__init__(config=inner.config)
        self.inner, self.controller = inner, controller

    def on_save(self, trainer, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs) -> None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        tmp = os.path.join(checkpoint_dir, DUET_STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.controller.state_dict(), f)
        os.replace(tmp, os.path.join(checkpoint_dir, DUET_STATE_FILE))
        self.inner.on_save(
            trainer, global_step=global_step, checkpoint_dir=checkpoint_dir, async_save=async_save, **kwargs
        )


class DuetPPOTrainerSync(PPOTrainerSync):
    """verl's synchronous V1 trainer with DUET's pre-rollout allocation and weighted advantage."""

    def __init__(self, config: DictConfig):
        super().__init__(config)
        poll = config.trainer.v1.sampler.get("poll_interval")  # an optional key of DUET's (verl's default: 2 s)
        if poll is not None:
            set_replay_poll_interval(self.replay_buffer, float(poll))
        self._init_duet(config)

    def _init_duet(self, config: DictConfig) -> None:
        """Check registration and build DUET's controller from ``config.duet``."""
        from duet_verl.plugin import assert_registered

        assert_registered()
        self.duet_settings = duet_settings_from_config(config)
        self.duet: DuetController | None = None
        self._plan_seconds = 0.0
        if self.duet_settings.enable:
            self.duet = DuetController(
                self.duet_settings,
                group_size=int(config.actor_rollout_ref.rollout.n),
                response_cap=int(config.data.max_response_length),
            )
            if hasattr(self, "checkpoint_callback"):
                self.checkpoint_callback = _DuetCheckpointCallback(self.checkpoint_callback, self.duet)

    # -- before rollout ------------------------------------------------------------------------
    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        batch = super()._next_train_batch(num_prompts)
        if self.duet is None:
            return batch
        start = time.perf_counter()
        ids = prompt_ids_of(batch)
        plan = self.duet.plan(ids, step=self.global_steps, features=self._features_of(batch))
        tu.assign_non_tensor_stack(batch, "__rollout_n__", [int(n) for n in plan.n])
        tu.assign_non_tensor_stack(batch, "duet_p_pre", [float(p) for p in plan.p_pre])
        tu.assign_non_tensor_stack(batch, "duet_prompt_id", ids)
        if plan.monitored:  # the policy runs the stop/abort monitor (DUET with duet.stop.enable)
            rules = plan.stop_rules
            if self.duet_settings.stop.markers_by_data_source and "data_source" in batch.keys():
                rules = rules_following_data_sources(rules, tu.get(batch, "data_source"))
            tu.assign_non_tensor_stack(batch, RULE_COLUMN, [rule.to_dict() for rule in rules])
        self._plan_seconds = time.perf_counter() - start
        return batch

    def _features_of(self, batch: TensorDict) -> np.ndarray:
        """Cold-start features: the dataset column ``duet.surrogate.feature_key`` (NaN where absent)."""
        key = self.duet_settings.surrogate.feature_key
        values = list(tu.get(batch, key)) if key in batch.keys() else [None] * len(batch)
        return np.array([[float(v) if v is not None else np.nan] for v in values], dtype=np.float64)

    # -- after rollout ---------------------------------------------------------------------------
    def _compute_advantage(self, batch, metrics: dict):
        if self.duet is None or self.config.algorithm.adv_estimator != DUET_ESTIMATOR:
            batch = super()._compute_advantage(batch, metrics)
            data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
            metrics["duet/tokens_generated"] = float(generated_tokens(data["response_mask"], padding_rows(batch)).sum())
            return batch
        return self._duet_advantage(batch, metrics)

    def _duet_advantage(self, batch, metrics: dict):
        """DUET's advantage of a step, in four steps, timed: the TransferQueue reads and writes (``timing_s/duet_io``,
        the data movement verl's own advantage stage does too) apart from DUET's own work (``timing_s/duet_update``;
        with ``timing_s/duet_plan``, DUET's overhead of the step)."""
        if self.config.algorithm.use_kl_in_reward:
            raise ValueError("duet_grpo does not support algorithm.use_kl_in_reward; use the KL loss instead")
        start = time.perf_counter()
        # 1. read the step's rollouts (and the server's report of each) from TransferQueue
        step = _StepRollouts.read(batch)
        io_seconds = time.perf_counter() - start
        mask, padding = step.padded("response_mask"), step.padding
        # 2. the weighted GRPO advantage on verl's unmasked sequence scores; aborted rows leave the loss
        out = self.duet.advantage(
            step.padded("rm_scores"),
            mask,
            [str(u) for u in step.column("uid", "")],
            step.reports,
            padding,
            p_pre=torch.tensor([float(p) for p in step.column("duet_p_pre", 1.0)]),
            norm_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
        )
        # 3. write advantages, returns and every mask the loss reads back to TransferQueue
        in_loss = torch.tensor([r.outcome not in DROPPED_OUTCOMES for r in step.reports]) & ~padding
        nested = step.data["response_mask"]
        fields = {"advantages": out.advantages, "returns": out.returns}
        for name in LOSS_MASK_FIELDS:
            loss_mask = step.padded(name) if name in step.data.keys() else mask
            fields[name] = loss_mask * in_loss.unsqueeze(-1).to(loss_mask.dtype)
        fields = {name: response_to_nested(value, nested) for name, value in fields.items()}
        put_start = time.perf_counter()
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, len(batch)))
        io_seconds += time.perf_counter() - put_start
        # 4. teach the surrogate and the gates; the controller reports every duet/* metric
        real = ~padding
        mismatch = (out.scores - sequence_scores(step.data["rm_scores"])).abs() > 1e-6
        metrics.update(
            self.duet.observe(
                StepObservation(
                    prompt_ids=[str(p) for p, r in zip(step.column("duet_prompt_id", ""), real, strict=True) if r],
                    response_lengths=generated_tokens(nested, padding).numpy(),
                    reports=[report for report, r in zip(step.reports, real, strict=True) if r],
                    scalar_advantages=out.scalar_advantages[real].numpy(),
                    seq_logprob_sums=(step.padded("old_log_probs") * mask).sum(-1)[real].to(torch.float64).numpy(),
                    score_mismatch=int(mismatch[real].sum()),
                    unweighted_advantages=out.unweighted_advantages[real].numpy(),
                    rewards=out.scores[real].numpy(),
                )
            )
        )
        metrics[PLAN_TIMING], metrics[IO_TIMING] = self._plan_seconds, io_seconds
        metrics[UPDATE_TIMING] = time.perf_counter() - start - io_seconds
        return batch

    # -- checkpointing -------------------------------------------------------------------------
    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.duet is None or self.global_steps == 0:
            return
        path = os.path.join(checkpoint_folder(self.config.trainer, self.global_steps), DUET_STATE_FILE)
        if not os.path.exists(path):
            logger.warning(f"No DUET state at {path}: the surrogate and gates start fresh")
            return
        with open(path) as f:
            self.duet.load_state_dict(json.load(f))
        print(f"[duet] restored DUET state from {path} ({len(self.duet.surrogate)} prompts tracked)", flush=True)
