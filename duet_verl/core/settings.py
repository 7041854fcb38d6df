"""DUET's knobs as validated dataclasses, built from the ``duet:`` config section (a plain mapping).

One home for each default and each rule: a default is read from the signature of the core function or class
that uses it (``allocate_rollouts``, ``StopRuleConfig``, ``GateEstimator``, ``PromptSurrogate``,
``duet_advantage``, ``stop_thresholds``), and a value is checked by that same code; this module only relabels
its error with the full config key (``duet.stop.eps_abort ...``), so a bad config fails in the driver within
seconds, before Ray or any model starts. ``config/duet_trainer.yaml`` must equal ``DuetSettings()`` (a test checks
it). Defaults are the paper's, except the learning-signal ones of issue 11 (the surrogate's signal, shrinkage
and decay, the measurement floor, censored gates), chosen with ``duet-verl simulate`` (README).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any

from duet_verl.core.advantage import check_weight_options, duet_advantage
from duet_verl.core.allocator import (
    allocate_rollouts,
    check_allocation_options,
    check_measurement_options,
    measurement_floor,
)
from duet_verl.core.gates import GateEstimator, check_threshold_options, stop_thresholds
from duet_verl.core.markers import MarkerSpec
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.policies import check_policy_name
from duet_verl.core.policies.arrol import ArrolPolicy
from duet_verl.core.policies.greso import GresoPolicy
from duet_verl.core.policies.vip import VipPolicy, vip_bounds
from duet_verl.core.protocol import PromptStopRule
from duet_verl.core.surrogate import PromptSurrogate, check_sigma_source, signal_advantages

__all__ = [
    "ArrolSettings",
    "DuetSettings",
    "ExploreSettings",
    "GateSettings",
    "GresoSettings",
    "StopSettings",
    "SurrogateSettings",
    "VipSettings",
    "WeightSettings",
]


def _defaults(target: Callable) -> dict[str, Any]:
    """Default values of ``target``'s parameters (a function, or a class's ``__init__``)."""
    return {
        name: p.default
        for name, p in inspect.signature(target).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _relabel(section: str, check: Callable[[], object], names: Mapping[str, str] | None = None) -> None:
    """Run a core check; re-raise its ``ValueError`` under the config key ``duet.{section}{name}``. Core messages
    start with the parameter's name; ``names`` maps parameter names to config names where they differ."""
    try:
        check()
    except ValueError as err:
        head, _, rest = str(err).partition(" ")
        name = head.rstrip(":")
        key = (names or {}).get(name, name)
        raise ValueError(f"duet.{section}{key} {rest}") from err


_ALLOCATION = _defaults(allocate_rollouts)
_RULE = {f.name: f.default for f in fields(StopRuleConfig) if f.default is not MISSING}
_MARKERS = MarkerSpec()
_THRESHOLDS = _defaults(stop_thresholds)
_GATES = _defaults(GateEstimator)
_SURROGATE = _defaults(PromptSurrogate)
_WEIGHTS = _defaults(duet_advantage)
_EXPLORE = _defaults(measurement_floor)
_SIGMA_FROM = _defaults(signal_advantages)["sigma_from"]
_GRESO = _defaults(GresoPolicy)
_VIP = _defaults(VipPolicy)
_ARROL = _defaults(ArrolPolicy)


@dataclass(frozen=True)
class SurrogateSettings:
    """Surrogate of prompt informativeness (SPEC §1, with the learning-signal fixes of issue 11).

    ``signal``: ``pass_rate`` (default; the Beta-posterior uncertainty ``E[p(1-p)]`` of the prompt's pass rate,
    optionally times ``L̂`` with ``length_scale``) or ``grad_trace`` (the paper's ``σ_t``). ``sigma_from``: the
    advantages ``σ_t`` is computed from, ``unweighted`` (default) or ``weighted`` (the reference). ``pseudo_count``:
    pseudo-observations of the cold-start prediction that a warm ``grad_trace`` score is shrunk toward.
    ``decay``: weight of a prompt's older observations per new one (both signals). ``prior_strength``: pseudo-
    rollouts of the pass-rate prior, centred on the population's pass rate.

    Measured with ``duet-verl simulate`` (defaults, seed 0; README "Keeping every prompt measurable"): DUET@0.5's
    gradient-rollout ratio vs GRPO@1.0 1.33, stuck fraction 0.000, Spearman(ŝ, p(1-p)) 0.65; ``prior_strength``
    2 / 1 / 0.25 gave 1.09 / 1.23 / 1.36; ``decay`` 0.5 / 1.0 gave 1.33 / 1.33; ``length_scale`` 1.23;
    ``grad_trace`` 1.29 (Spearman 0.72). The old settings (``grad_trace``, ``weighted``, no shrinkage or decay,
    floor 1): 1.55 but 48 % of learnable prompts stuck each epoch.
    """

    sigma_min: float = _SURROGATE["sigma_min"]
    k_warmup: int = _SURROGATE["k_warmup"]
    max_prompts: int = _SURROGATE["max_prompts"]
    length_window: int = _SURROGATE["length_window"]
    ridge_l2: float = _SURROGATE["ridge_l2"]
    ridge_decay: float = _SURROGATE["ridge_decay"]
    ridge_file: str | None = None  # JSON prior; its own sigma_min, when present, takes precedence
    feature_key: str = "duet_prompt_logprob"  # the dataset column written by `duet-verl score-prompts`
    signal: str = _SURROGATE["signal"]
    sigma_from: str = _SIGMA_FROM
    pseudo_count: float = _SURROGATE["pseudo_count"]
    decay: float = _SURROGATE["decay"]
    prior_strength: float = _SURROGATE["prior_strength"]
    length_scale: bool = _SURROGATE["length_scale"]

    def surrogate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~duet_verl.core.surrogate.PromptSurrogate`."""
        names = (
            "sigma_min",
            "k_warmup",
            "max_prompts",
            "length_window",
            "ridge_l2",
            "ridge_decay",
            "signal",
            "pseudo_count",
            "decay",
            "prior_strength",
            "length_scale",
        )
        return {name: getattr(self, name) for name in names}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel(
            "surrogate.",
            lambda: PromptSurrogate(default_length=1.0, **self.surrogate_kwargs()),
            {"l2": "ridge_l2"},
        )
        _relabel("surrogate.", lambda: check_sigma_source(self.sigma_from))
        if not (isinstance(self.feature_key, str) and self.feature_key):
            raise ValueError(f"duet.surrogate.feature_key must be a non-empty column name, got {self.feature_key!r}")


@dataclass(frozen=True)
class ExploreSettings:
    """Keeping every prompt measurable (issue 11): each prompt gets at least ``floor`` rollouts with probability
    ``reprobe`` (re-drawn every step; ``1`` = always), and a prompt the floor lifted by the draw gets the matching
    importance weight ``1 / reprobe``. Measured with ``duet-verl simulate`` (seed 0): floor 2, ``reprobe=1``
    leaves 0 % of learnable prompts stuck (ratio 1.33); ``reprobe`` 0.5 / 0.25 → 4.1 % / 5.8 % stuck (1.37 / 1.41);
    no floor → 7.3 % (1.41)."""

    floor: int = _EXPLORE["floor"]
    reprobe: float = _EXPLORE["reprobe"]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("explore.", lambda: check_measurement_options(floor=self.floor, reprobe=self.reprobe))


@dataclass(frozen=True)
class StopSettings:
    """Marker-gated stop/abort during generation (SPEC §3)."""

    enable: bool = True
    min_tokens: int = _RULE["min_tokens"]
    grace: int = _RULE["grace"]
    check_every: int = _RULE["check_every"]
    hysteresis: int = _RULE["hysteresis"]
    signal: str = _RULE["signal"]
    top_logprobs: int = 2
    eps_len: float = _RULE["eps_len"]
    eps_abort: float = _RULE["eps_abort"]
    marker_domains: tuple[str, ...] = _MARKERS.domains
    marker_regexes: tuple[str, ...] = _MARKERS.regexes
    markers_by_data_source: bool = True  # a prompt of a data source duet_verl.verifiers knows gets its domain
    threshold_mode: str = _THRESHOLDS["mode"]
    threshold_low: float = _THRESHOLDS["low"]
    threshold_high: float = _THRESHOLDS["high"]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("stop.", self.markers, {"domains": "marker_domains", "regexes": "marker_regexes"})
        _relabel("stop.", lambda: self.prompt_rule(k1=0, k2=0, threshold=0.5, run_seed=0, step=0))
        _relabel("stop.", lambda: check_threshold_options(self.threshold_mode, self.threshold_low, self.threshold_high))

    def markers(self) -> MarkerSpec:
        """The marker set for rollouts."""
        return MarkerSpec(domains=tuple(self.marker_domains), regexes=tuple(self.marker_regexes))

    def prompt_rule(self, k1: int, k2: int, threshold: float, run_seed: int, step: int) -> PromptStopRule:
        """One prompt's stop rule with these settings and the step's gates and threshold."""
        shared = ("min_tokens", "grace", "check_every", "hysteresis", "signal", "eps_len", "eps_abort")
        monitor = StopRuleConfig(
            k1=k1,
            k2=k2,
            threshold=threshold,
            seed=0,
            markers=self.markers(),
            **{name: getattr(self, name) for name in shared},
        )
        return PromptStopRule(monitor, top_logprobs=self.top_logprobs, run_seed=run_seed, step=step)


@dataclass(frozen=True)
class GateSettings:
    """K1/K2 gate estimation (SPEC §3); the names are :class:`~duet_verl.core.gates.GateEstimator`'s."""

    k1_init: float = _GATES["k1_init"]
    k2_init: float = _GATES["k2_init"]
    q1: float = _GATES["q1"]
    q2: float = _GATES["q2"]
    window: int = _GATES["window"]
    update_every: int = _GATES["update_every"]
    min_samples: int = _GATES["min_samples"]
    k1_floor: int = _GATES["k1_floor"]
    min_gap: int = _GATES["min_gap"]
    censored: bool = _GATES["censored"]  # aborted lengths as right-censored (Kaplan–Meier); false: kept lengths only

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("gates.", lambda: GateEstimator(cap=1000, **asdict(self)))


@dataclass(frozen=True)
class WeightSettings:
    """Importance weights and the advantage (SPEC §4); the names are ``duet_advantage``'s."""

    max_weight: float = _WEIGHTS["max_weight"]
    self_normalize: bool = _WEIGHTS["self_normalize"]
    singleton: str = _WEIGHTS["singleton"]
    aborted_baseline: str = _WEIGHTS["aborted_baseline"]
    failure_score: float = _WEIGHTS["failure_score"]
    row_share_cap: float = _WEIGHTS["row_share_cap"]  # largest share of Σ|w·A|·len one row may hold (1 = off)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        options = {k: v for k, v in asdict(self).items() if k != "self_normalize"}
        _relabel("weights.", lambda: check_weight_options(**options))


@dataclass(frozen=True)
class GresoSettings:
    """``duet.policy=greso`` (arXiv 2506.02177): a prompt whose last ``z`` groups were all correct (all wrong) is
    rolled out with probability ``p_easy**z`` (``p_hard**z``); both move by ``adjust_step`` per step, within
    ``[min_explore, 1]``, so that the share of zero-variance groups tracks ``target_zero_variance``."""

    p_easy: float = _GRESO["p_easy"]
    p_hard: float = _GRESO["p_hard"]
    target_zero_variance: float = _GRESO["target_zero_variance"]
    adjust_step: float = _GRESO["adjust_step"]
    min_explore: float = _GRESO["min_explore"]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~duet_verl.core.policies.greso.GresoPolicy`."""
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("greso.", lambda: GresoPolicy(**self.kwargs()))


@dataclass(frozen=True)
class VipSettings:
    """``duet.policy=vip`` (arXiv 2602.01601): rollouts per prompt in ``[min_fraction·G, max_fraction·G]`` (the
    paper's ``[4, 16]`` at ``G = 16``); the GP is fitted on the last ``window`` observations once it has
    ``min_points``, its hyper-parameters re-optimised every ``refit_every`` fits."""

    min_fraction: float = _VIP["min_fraction"]
    max_fraction: float = _VIP["max_fraction"]
    window: int = _VIP["window"]
    min_points: int = _VIP["min_points"]
    refit_every: int = _VIP["refit_every"]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~duet_verl.core.policies.vip.VipPolicy` (without the bounds)."""
        return asdict(self)

    def bounds(self, group_size: int, budget: float, n_min: int) -> dict[str, int]:
        """``n_lo``/``n_hi`` at this group size and budget."""
        lo, hi = vip_bounds(group_size, budget, n_min, self.min_fraction, self.max_fraction)
        return {"n_lo": lo, "n_hi": hi}

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("vip.", lambda: VipPolicy(**self.kwargs()))


@dataclass(frozen=True)
class ArrolSettings:
    """``duet.policy=arrol`` (arXiv 2603.24840): at ``detect_at`` tokens a quality head scores each rollout and the
    monitor prunes it so that about ``keep`` of a group survives, ``target`` of the survivors correct (each keep
    probability at least ``min_keep``); no pruning for ``warmup_steps`` steps, the head refitted each step on the
    last ``buffer`` probed rollouts (from ``min_samples`` on, L2 strength ``regularization``); the budget is divided
    by the measured spend ratio (moving average with weight ``spend_smoothing``) so pruning's savings buy rollouts."""

    detect_at: int = _ARROL["detect_at"]
    keep: float = _ARROL["keep"]
    target: float = _ARROL["target"]
    min_keep: float = _ARROL["min_keep"]
    warmup_steps: int = _ARROL["warmup_steps"]
    buffer: int = _ARROL["buffer"]
    min_samples: int = _ARROL["min_samples"]
    regularization: float = _ARROL["regularization"]
    spend_smoothing: float = _ARROL["spend_smoothing"]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~duet_verl.core.policies.arrol.ArrolPolicy` (without ``max_rollouts``)."""
        return asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad key."""
        _relabel("arrol.", lambda: ArrolPolicy(**self.kwargs()))


@dataclass(frozen=True)
class DuetSettings:
    """The whole ``duet:`` section."""

    enable: bool = True
    policy: str = "duet"  # duet | uniform | greso | vip | arrol (core/policies); they share budget, metrics, state
    budget: float = 0.5  # fraction b of GRPO's token cost; the paper's main setting
    n_min: int = _ALLOCATION["n_min"]
    n_max: int = _ALLOCATION["n_max"]
    eps_pre: float = _ALLOCATION["eps_pre"]
    cap_propensity: bool = _ALLOCATION["cap_propensity"]
    length_cost: str = _ALLOCATION["length_cost"]  # sqrt: the paper's n ∝ s/sqrt(L); linear: n ∝ s/L
    allocate: bool = True  # false: every prompt gets round(budget * G) rollouts (the stop/abort rule alone)
    seed: int = 0
    surrogate: SurrogateSettings = field(default_factory=SurrogateSettings)
    explore: ExploreSettings = field(default_factory=ExploreSettings)
    stop: StopSettings = field(default_factory=StopSettings)
    gates: GateSettings = field(default_factory=GateSettings)
    weights: WeightSettings = field(default_factory=WeightSettings)
    greso: GresoSettings = field(default_factory=GresoSettings)
    vip: VipSettings = field(default_factory=VipSettings)
    arrol: ArrolSettings = field(default_factory=ArrolSettings)

    def validate(self, group_size: int | None = None) -> DuetSettings:
        """Check every value; with ``group_size`` (verl's ``rollout.n``) also that the budget is feasible."""
        _relabel(
            "",
            lambda: check_allocation_options(
                budget_fraction=self.budget,
                n_min=self.n_min,
                n_max=self.n_max,
                eps_pre=self.eps_pre,
                group_size=group_size,
                length_cost=self.length_cost,
            ),
            {"budget_fraction": "budget"},
        )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"duet.seed must be an integer, got {self.seed!r}")
        _relabel("", lambda: check_policy_name(self.policy))
        if self.policy == ArrolPolicy.name and not self.stop.enable:
            raise ValueError("duet.stop.enable=false turns off the monitor that duet.policy=arrol prunes through")
        parts = (self.surrogate, self.explore, self.stop, self.gates, self.weights, self.greso, self.vip, self.arrol)
        for part in parts:
            part.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form, tuples as lists (the shape of the YAML section)."""
        return _plain(asdict(self))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DuetSettings:
        """Build from a (possibly partial) mapping; unknown keys raise ``ValueError`` naming them."""
        return _build(cls, dict(data or {}), "")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
