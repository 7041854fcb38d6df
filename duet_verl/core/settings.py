"""DUET's knobs as validated dataclasses, built from the ``duet:`` config section (a plain mapping).

Every invalid value raises ``ValueError`` naming its full key (``duet.stop.eps_abort``), so a bad config
fails in the driver within seconds, before Ray or any model starts. Defaults are the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from duet_verl.core.advantage import ABORTED_BASELINE_RULES, SINGLETON_RULES
from duet_verl.core.gates import THRESHOLD_MODES
from duet_verl.core.markers import MARKER_DOMAINS, MarkerSpec
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.signals import SIGNALS

__all__ = ["DuetSettings", "GateSettings", "StopSettings", "SurrogateSettings", "WeightSettings"]


def _require(ok: bool, key: str, message: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"duet.{key} {message}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _unit(key: str, value: Any, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and math.isfinite(value) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    _require(ok, key, "must be in (0, 1]" if low_open else "must be in [0, 1]", value)


def _positive_int(key: str, value: Any, minimum: int = 1) -> None:
    _require(_is_int(value) and value >= minimum, key, f"must be an integer >= {minimum}", value)


@dataclass(frozen=True)
class SurrogateSettings:
    """Surrogate of prompt informativeness (SPEC §1)."""

    sigma_min: float = 1e-3
    k_warmup: int = 1
    max_prompts: int = 50_000
    length_window: int = 1024
    ridge_l2: float = 1.0
    ridge_decay: float = 1.0
    ridge_file: str | None = None
    feature_key: str = "duet_prompt_logprob"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _require(
            self.sigma_min >= 0 and math.isfinite(self.sigma_min), "surrogate.sigma_min", "must be >= 0", self.sigma_min
        )
        _positive_int("surrogate.k_warmup", self.k_warmup)
        _positive_int("surrogate.max_prompts", self.max_prompts)
        _positive_int("surrogate.length_window", self.length_window)
        _require(self.ridge_l2 > 0, "surrogate.ridge_l2", "must be > 0", self.ridge_l2)
        _unit("surrogate.ridge_decay", self.ridge_decay, low_open=True)
        _require(bool(self.feature_key), "surrogate.feature_key", "must be a non-empty column name", self.feature_key)


# One source for the paper's stop defaults: the per-rollout config's own field defaults.
_RULE_DEFAULTS = {f.name: f.default for f in fields(StopRuleConfig)}


@dataclass(frozen=True)
class StopSettings:
    """Marker-gated stop/abort during generation (SPEC §3)."""

    enable: bool = True
    min_tokens: int = _RULE_DEFAULTS["min_tokens"]
    grace: int = _RULE_DEFAULTS["grace"]
    check_every: int = _RULE_DEFAULTS["check_every"]
    hysteresis: int = _RULE_DEFAULTS["hysteresis"]
    signal: str = _RULE_DEFAULTS["signal"]
    top_logprobs: int = 2
    eps_len: float = _RULE_DEFAULTS["eps_len"]
    eps_abort: float = _RULE_DEFAULTS["eps_abort"]
    marker_domains: tuple[str, ...] = ("math", "generic")
    marker_regexes: tuple[str, ...] = ()
    threshold_mode: str = "batch_percentile"
    threshold_low: float = 0.5
    threshold_high: float = 0.99

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _positive_int("stop.min_tokens", self.min_tokens, 0)
        _positive_int("stop.grace", self.grace, 0)
        _positive_int("stop.check_every", self.check_every)
        _positive_int("stop.hysteresis", self.hysteresis)
        _require(self.signal in SIGNALS, "stop.signal", f"must be one of {sorted(SIGNALS)}", self.signal)
        _require(
            _is_int(self.top_logprobs) and 2 <= self.top_logprobs <= 20,
            "stop.top_logprobs",
            "must be an integer in [2, 20]",
            self.top_logprobs,
        )
        _unit("stop.eps_len", self.eps_len)
        _unit("stop.eps_abort", self.eps_abort, low_open=True)
        unknown = [d for d in self.marker_domains if d not in MARKER_DOMAINS]
        _require(
            not unknown,
            "stop.marker_domains",
            f"has unknown domain(s) {unknown}; known: {sorted(MARKER_DOMAINS)}",
            list(self.marker_domains),
        )
        try:
            self.markers()
        except ValueError as err:
            raise ValueError(f"duet.stop.marker_regexes: {err}") from err
        _require(
            self.threshold_mode in THRESHOLD_MODES,
            "stop.threshold_mode",
            f"must be one of {THRESHOLD_MODES}",
            self.threshold_mode,
        )
        _unit("stop.threshold_low", self.threshold_low)
        _unit("stop.threshold_high", self.threshold_high)
        _require(
            self.threshold_low <= self.threshold_high,
            "stop.threshold_low",
            "must not exceed threshold_high",
            self.threshold_low,
        )

    def markers(self) -> MarkerSpec:
        """The marker set for rollouts."""
        return MarkerSpec(domains=tuple(self.marker_domains), regexes=tuple(self.marker_regexes))

    def rule_kwargs(self) -> dict[str, Any]:
        """The fields a rollout's :class:`~duet_verl.core.monitor.StopRuleConfig` shares with these settings."""
        shared = ("min_tokens", "grace", "check_every", "hysteresis", "signal", "eps_len", "eps_abort")
        return {**{name: getattr(self, name) for name in shared}, "markers": self.markers()}


@dataclass(frozen=True)
class GateSettings:
    """K1/K2 gate estimation (SPEC §3)."""

    k1_init: float = 0.3
    k2_init: float = 0.7
    q1: float = 0.3
    q2: float = 0.8
    window: int = 1024
    update_every: int = 10
    min_samples: int = 32
    k1_floor: int = 32
    min_gap: int = 50

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        for name in ("k1_init", "k2_init", "q1", "q2"):
            _unit(f"gates.{name}", getattr(self, name))
        _require(self.k1_init <= self.k2_init, "gates.k1_init", "must not exceed k2_init", self.k1_init)
        _require(self.q1 <= self.q2, "gates.q1", "must not exceed q2", self.q1)
        for name in ("window", "update_every", "min_samples"):
            _positive_int(f"gates.{name}", getattr(self, name))
        _positive_int("gates.k1_floor", self.k1_floor, 0)
        _positive_int("gates.min_gap", self.min_gap, 0)


@dataclass(frozen=True)
class WeightSettings:
    """Importance weights and the advantage (SPEC §4)."""

    max_weight: float = 1000.0
    self_normalize: bool = False
    singleton: str = "zero"
    aborted_baseline: str = "failure"
    failure_score: float = 0.0

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _require(
            self.max_weight >= 1 and math.isfinite(self.max_weight),
            "weights.max_weight",
            "must be >= 1",
            self.max_weight,
        )
        _require(
            self.singleton in SINGLETON_RULES, "weights.singleton", f"must be one of {SINGLETON_RULES}", self.singleton
        )
        _require(
            self.aborted_baseline in ABORTED_BASELINE_RULES,
            "weights.aborted_baseline",
            f"must be one of {ABORTED_BASELINE_RULES}",
            self.aborted_baseline,
        )
        _require(
            isinstance(self.failure_score, int | float) and math.isfinite(self.failure_score),
            "weights.failure_score",
            "must be a finite number",
            self.failure_score,
        )


@dataclass(frozen=True)
class DuetSettings:
    """The whole ``duet:`` section."""

    enable: bool = True
    budget: float = 0.5
    n_min: int = 1
    n_max: int = 32
    eps_pre: float = 0.05
    cap_propensity: bool = True
    seed: int = 0
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    stop: StopSettings = field(default_factory=StopSettings)
    gates: GateSettings = field(default_factory=GateSettings)
    weights: WeightSettings = field(default_factory=WeightSettings)

    def validate(self, group_size: int | None = None) -> DuetSettings:
        """Check every value; with ``group_size`` (verl's ``rollout.n``) also that the budget is feasible."""
        _unit("budget", self.budget, low_open=True)
        _positive_int("n_min", self.n_min)
        _positive_int("n_max", self.n_max)
        _require(self.n_min <= self.n_max, "n_min", f"must not exceed n_max ({self.n_max})", self.n_min)
        _unit("eps_pre", self.eps_pre, low_open=True)
        _require(_is_int(self.seed), "seed", "must be an integer", self.seed)
        if group_size is not None:
            _require(
                self.budget * group_size >= self.n_min,
                "budget",
                f"times rollout.n ({group_size}) must be >= duet.n_min ({self.n_min}) (n_min rollouts per prompt)",
                self.budget,
            )
        for part in (self.surrogate, self.stop, self.gates, self.weights):
            part.validate()
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DuetSettings:
        """Build from a (possibly partial) mapping; unknown keys raise ``ValueError`` naming them."""
        return _build(cls, dict(data or {}), "")


def _build(cls, data: dict[str, Any], prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) duet.{prefix}{unknown[0]} (known: {sorted(known)})")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if callable(known[name].default_factory) else None
        if is_dataclass(default):
            if not isinstance(value, Mapping):
                raise ValueError(f"duet.{prefix}{name} must be a mapping, got {value!r}")
            kwargs[name] = _build(type(default), dict(value), f"{prefix}{name}.")
        elif isinstance(known[name].default, tuple):
            if isinstance(value, str) or not hasattr(value, "__iter__"):
                raise ValueError(f"duet.{prefix}{name} must be a list, got {value!r}")
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)
