"""DUET's V1 trainer: verl's ``PPOTrainerSync`` with four hooks.

* ``_next_train_batch``: plan the batch (surrogate → allocation → stop rules) and attach, per prompt,
  ``__rollout_n__`` (read natively by verl's ``AgentLoopWorkerTQ``), ``duet_p_pre``, ``duet_prompt_id``
  and ``duet_stop_rule`` (read by the ``duet_single_turn`` agent loop). Validation batches never pass here.
* ``_compute_advantage``: with ``algorithm.adv_estimator=duet_grpo``, weight and mask the GRPO advantage
  (scores summed without the mask, as verl's GRPO; aborted rollouts and padding rows get advantage 0 and
  both ``response_mask`` and ``loss_mask`` 0, so they leave the token-mean's numerator *and* denominator),
  write them back to TransferQueue, then teach the surrogate and the gates from the step and log
  ``duet/*`` metrics (``duet/score_mismatch`` checks DUET's scores against verl's sequence scores).
* ``_save_checkpoint`` / ``_load_checkpoint``: DUET's state rides along in ``global_step_N/duet_state.json``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch
import transfer_queue as tq
from omegaconf import DictConfig
from tensordict import TensorDict
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_to_nested

from duet_verl.algos import DUET_ESTIMATOR, duet_weighted_advantage
from duet_verl.checks import duet_settings_from_config
from duet_verl.core.controller import DuetController, StepObservation
from duet_verl.core.monitor import Outcome

__all__ = ["DUET_STATE_FILE", "DuetPPOTrainerSync", "prompt_ids_of"]

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "INFO"))

DUET_STATE_FILE = "duet_state.json"
_ADV_FIELDS = [
    "uid",
    "duet_prompt_id",
    "duet_p_pre",
    "response_mask",
    "loss_mask",
    "rm_scores",
    "old_log_probs",
    "extra_fields",
]
# The masks verl 0.9.1 reads for the policy loss: ``response_mask`` in ``ppo_loss`` (numerator of token-mean),
# ``loss_mask`` in the FSDP and Megatron engines' ``forward_backward_batch`` (its denominator, batch_num_tokens).
LOSS_MASK_FIELDS = ("response_mask", "loss_mask")


def sequence_scores(rm_scores: torch.Tensor) -> torch.Tensor:
    """verl's sequence score of each row of a jagged ``rm_scores``: every token's reward, no mask applied."""
    return torch.stack([row.to(torch.float64).sum() for row in rm_scores.unbind()])


def prompt_ids_of(batch: TensorDict) -> list[str]:
    """Stable prompt ids: the dataset's ``index`` (``extra_info.index``), prefixed by ``data_source`` if present."""
    if "index" not in batch.keys():
        raise ValueError("DUET needs a stable prompt id: the dataset must provide extra_info.index")
    index = [str(i) for i in tu.get(batch, "index")]
    if "data_source" in batch.keys():
        sources = [str(s) for s in tu.get(batch, "data_source")]
        return [f"{s}/{i}" for s, i in zip(sources, index, strict=True)]
    return index


def _column(data: TensorDict, key: str, size: int, default: Any) -> list[Any]:
    return list(tu.get(data, key)) if key in data.keys() else [default] * size


class DuetPPOTrainerSync(PPOTrainerSync):
    """verl's synchronous V1 trainer with DUET's pre-rollout allocation and weighted advantage."""

    def __init__(self, config: DictConfig):
        super().__init__(config)
        self._init_duet(config)

    def _init_duet(self, config: DictConfig) -> None:
        """Check registration and build DUET's controller from ``config.duet``."""
        from duet_verl.plugin import assert_registered

        assert_registered()
        self.duet_settings = duet_settings_from_config(config)
        self.duet: DuetController | None = None
        if self.duet_settings.enable:
            self.duet = DuetController(
                self.duet_settings,
                group_size=int(config.actor_rollout_ref.rollout.n),
                response_cap=int(config.data.max_response_length),
            )
        self._duet_plan_metrics: dict[str, float] = {}
        self._duet_features: dict[str, np.ndarray] = {}

    # -- before rollout ------------------------------------------------------------------------
    def _next_train_batch(self, num_prompts: int | None = None) -> TensorDict:
        batch = super()._next_train_batch(num_prompts)
        if self.duet is None:
            return batch
        ids = prompt_ids_of(batch)
        features = self._features_of(batch, ids)
        plan = self.duet.plan(ids, step=self.global_steps, features=features)
        tu.assign_non_tensor_stack(batch, "__rollout_n__", [int(n) for n in plan.n])
        tu.assign_non_tensor_stack(batch, "duet_p_pre", [float(p) for p in plan.p_pre])
        tu.assign_non_tensor_stack(batch, "duet_prompt_id", ids)
        if self.duet_settings.stop.enable:
            tu.assign_non_tensor_stack(batch, "duet_stop_rule", plan.stop_rules)
        self._duet_plan_metrics = plan.metrics()
        return batch

    def _features_of(self, batch: TensorDict, ids: list[str]) -> np.ndarray:
        """Cold-start features: the dataset column ``duet.surrogate.feature_key`` (NaN where absent)."""
        key = self.duet_settings.surrogate.feature_key
        values = _column(batch, key, len(ids), float("nan"))
        feats = np.array([[float(v) if v is not None else np.nan] for v in values], dtype=np.float64)
        self._duet_features.update({pid: row for pid, row in zip(ids, feats, strict=True)})
        return feats

    # -- after rollout ---------------------------------------------------------------------------
    def _compute_advantage(self, batch, metrics: dict):
        if self.duet is None or self.config.algorithm.adv_estimator != DUET_ESTIMATOR:
            batch = super()._compute_advantage(batch, metrics)
            metrics["duet/tokens_generated"] = self._generated_tokens(batch)  # same accounting for baselines
            return batch
        if self.config.algorithm.use_kl_in_reward:
            raise ValueError("duet_grpo does not support algorithm.use_kl_in_reward; use the KL loss instead")
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=_ADV_FIELDS)
        nested_mask = data["response_mask"]
        padded = data.select("response_mask", "rm_scores", "old_log_probs").to_padded_tensor()
        mask, rewards, old_log_probs = padded["response_mask"], padded["rm_scores"], padded["old_log_probs"]
        size = mask.shape[0]
        padding = torch.tensor([bool(tag.get("is_padding", False)) for tag in batch.tags])
        extra = [e or {} for e in _column(data, "extra_fields", size, {})]
        outcomes = [str(e.get("duet_outcome", Outcome.NATURAL_EOS.value)) for e in extra]
        aborted = torch.tensor([o == Outcome.ABORTED.value for o in outcomes])
        eps_kept = torch.tensor([o == Outcome.EPS_KEPT.value for o in outcomes])
        p_pre = torch.tensor([float(p) if p is not None else 1.0 for p in _column(data, "duet_p_pre", size, 1.0)])
        uids = [str(u) for u in tu.get(data, "uid")]
        out = duet_weighted_advantage(
            rewards,
            mask,
            uids,
            self.duet_settings,
            norm_by_std=bool(self.config.algorithm.get("norm_adv_by_std_in_grpo", True)),
            p_pre=p_pre,
            eps_kept=eps_kept,
            aborted=aborted,
            padding=padding,
        )
        in_loss = ~(aborted | padding)
        fields = {
            "advantages": response_to_nested(out.advantages, nested_mask),
            "returns": response_to_nested(out.returns, nested_mask),
        }
        for name in LOSS_MASK_FIELDS:
            loss_mask = data[name].to_padded_tensor(padding=0) if name in data.keys() else mask
            fields[name] = response_to_nested(loss_mask * in_loss.unsqueeze(-1).to(loss_mask.dtype), nested_mask)
        batch = tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=size)
        )
        real = ~padding
        mismatch = (out.scores - sequence_scores(data["rm_scores"])).abs() > 1e-6
        metrics["duet/score_mismatch"] = float(mismatch[real].sum())
        metrics.update({f"duet/{k}": v for k, v in out.metrics.items()})
        metrics.update(self._duet_plan_metrics)
        prompt_ids = [str(p) for p in _column(data, "duet_prompt_id", size, "")]
        obs = StepObservation(
            prompt_ids=[p for p, keep in zip(prompt_ids, real.tolist(), strict=True) if keep],
            response_lengths=mask.sum(-1)[real].numpy(),
            outcomes=[o for o, keep in zip(outcomes, real.tolist(), strict=True) if keep],
            scalar_advantages=out.scalar_advantages[real].numpy(),
            seq_logprob_sums=(old_log_probs * mask).sum(-1)[real].to(torch.float64).numpy(),
            features=self._duet_features,
        )
        metrics.update(self.duet.observe(obs))
        monitored = [e for e, keep in zip(extra, real.tolist(), strict=True) if keep and "duet_monitor_ns" in e]
        if monitored:
            monitor_ns = sum(int(e["duet_monitor_ns"]) for e in monitored)
            metrics["duet/monitor_ns_per_token"] = monitor_ns / max(float(obs.response_lengths.sum()), 1.0)
            metrics["duet/abort_failed"] = float(sum(bool(e.get("duet_abort_failed")) for e in monitored))
        metrics["duet/tokens_vs_budget"] = metrics["duet/tokens_generated"] / max(
            self._duet_plan_metrics.get("duet/budget_tokens", float("nan")), 1.0
        )
        self._duet_features = {}
        return batch

    @staticmethod
    def _generated_tokens(batch) -> float:
        """Response tokens of the step's real (non-padding) rollouts."""
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["response_mask"])
        lengths = data["response_mask"].to_padded_tensor(padding=0).sum(-1)
        real = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags])
        return float(lengths[real].sum())

    # -- checkpointing -------------------------------------------------------------------------
    def _save_checkpoint(self):
        if self.duet is not None:
            folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, DUET_STATE_FILE + ".tmp")
            with open(tmp, "w") as f:
                json.dump(self.duet.state_dict(), f)
            os.replace(tmp, os.path.join(folder, DUET_STATE_FILE))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.duet is None or self.global_steps == 0:
            return
        trainer_cfg = self.config.trainer
        if trainer_cfg.resume_mode == "resume_path":
            folder = trainer_cfg.resume_from_path
        else:
            folder = os.path.join(trainer_cfg.default_local_dir, f"global_step_{self.global_steps}")
        path = os.path.join(os.path.abspath(folder), DUET_STATE_FILE)
        if not os.path.exists(path):
            logger.warning(f"No DUET state at {path}: the surrogate and gates start fresh")
            return
        with open(path) as f:
            self.duet.load_state_dict(json.load(f))
        print(f"[duet] restored DUET state from {path} ({len(self.duet.surrogate)} prompts tracked)", flush=True)
