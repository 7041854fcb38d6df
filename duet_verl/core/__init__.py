"""DUET's algorithm, free of verl and vLLM: surrogate, allocator, stop/abort monitor, weights and advantage."""

from duet_verl.core.advantage import (
    WeightedAdvantage,
    duet_advantage,
    effective_sample_size,
    grpo_group_advantage,
    importance_weights,
    normalize_weights,
)
from duet_verl.core.allocator import Allocation, allocate_rollouts, token_budget
from duet_verl.core.gates import THRESHOLD_MODES, GateEstimator, stop_thresholds
from duet_verl.core.markers import MARKER_DOMAINS, MarkerSpec, build_detectors
from duet_verl.core.monitor import Action, MonitorRecord, Outcome, StopAbortMonitor, StopRuleConfig
from duet_verl.core.rng import RolloutRandom, rollout_seed
from duet_verl.core.signals import SIGNALS
from duet_verl.core.surrogate import OnlineRidge, PromptSurrogate, SurrogatePrediction, group_signal_std, pearson

__all__ = [
    "MARKER_DOMAINS",
    "SIGNALS",
    "THRESHOLD_MODES",
    "Action",
    "Allocation",
    "GateEstimator",
    "MarkerSpec",
    "MonitorRecord",
    "OnlineRidge",
    "Outcome",
    "PromptSurrogate",
    "RolloutRandom",
    "StopAbortMonitor",
    "StopRuleConfig",
    "SurrogatePrediction",
    "WeightedAdvantage",
    "allocate_rollouts",
    "build_detectors",
    "duet_advantage",
    "effective_sample_size",
    "group_signal_std",
    "grpo_group_advantage",
    "importance_weights",
    "normalize_weights",
    "pearson",
    "rollout_seed",
    "stop_thresholds",
    "token_budget",
]
