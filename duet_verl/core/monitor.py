"""The per-rollout stop/abort state machine (SPEC §3), engine-agnostic.

A rollout server creates one :class:`StopAbortMonitor` per request from a :class:`StopRuleConfig`
(a plain dict travels in ``sampling_params["extra_args"]``) and calls :meth:`StopAbortMonitor.on_token`
for every generated token with its decoded text and the top-k log-probabilities of the distribution
it was sampled from. The return value says whether to continue, to stop as if EOS had been emitted,
or to abort. When generation ends on its own the server calls :meth:`StopAbortMonitor.finish`.

Phases, with ``t`` the number of tokens generated so far:

* ``t < min_tokens``: nothing happens.
* **A** (from ``max(min_tokens, k1)``): every ``check_every`` tokens the text generated since the
  last check is fed to the marker detectors (each character is scanned once in the whole rollout).
* **B** (marker seen): the confidence signal is compared with this rollout's threshold; after
  ``hysteresis`` consecutive tokens above it the rollout stops, except with probability ``eps_len``,
  in which case it is left to run to its natural end with no further stopping (length exploration).
* **C** (no marker at ``k2 + grace``): one last marker check; if still none, abort with probability
  ``1 - eps_abort``, otherwise keep the rollout to its natural end (``eps_kept``, importance weight
  ``1 / eps_abort``).

A rule may also carry an ARRoL probe (:class:`~duet_verl.core.probe.ProbeRule`, ``duet.policy=arrol``): at token
``probe.at`` the rollout is kept or pruned (outcome ``pruned``, ended through the abort path); with
``stop_abort=False`` the phases above are skipped and only the probe runs.

A server need not call :meth:`StopAbortMonitor.on_token` for every token: before a check nothing is read, so it may
:meth:`~StopAbortMonitor.skip` up to :attr:`~StopAbortMonitor.quiet_until` tokens and hand the skipped tokens' text
over with the token that is checked (:attr:`~StopAbortMonitor.text_due`); text is read only at checks, so after a
marker (phase B) no text is needed at all. The decisions are the same as with every token fed one by one.
Log-probs are read only in phase B and by a probe (:attr:`~StopAbortMonitor.reads_signal`): a token fed before that
may carry an empty ``top_logprobs``.

Markers are recognised wherever they appear in the response, not only in a trailing window, and the
recorded ``marker_at`` is the check at which the marker was first noticed (granularity ``check_every``).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any

from duet_verl.core.checks import require_positive_ints
from duet_verl.core.markers import MarkerSpec, build_detectors
from duet_verl.core.probe import ProbeFeatures, ProbeRule
from duet_verl.core.rng import RolloutRandom
from duet_verl.core.signals import SIGNALS

__all__ = [
    "DROPPED_OUTCOMES",
    "ENGINE_ENDINGS",
    "Action",
    "MonitorRecord",
    "Outcome",
    "StopAbortMonitor",
    "StopRuleConfig",
]


class Action(IntEnum):
    """What the server should do after a token."""

    CONTINUE = 0
    STOP = 1  # end the rollout as if EOS had been emitted
    ABORT = 2  # end the rollout; it is dropped from the gradient


class Outcome(str, Enum):
    """How a rollout ended."""

    RUNNING = "running"
    STOPPED_AFTER_MARKER = "stopped_after_marker"
    ABORTED = "aborted"
    EPS_KEPT = "eps_kept"
    NATURAL_EOS = "natural_eos"
    LENGTH_CAP = "length_cap"
    ENGINE_ABORTED = "engine_aborted"  # the engine ended the request itself (e.g. verl's abort_all_requests)
    PRUNED = "pruned"  # ARRoL's probe pruned it: it leaves the loss and its group's baseline


ENGINE_ENDINGS = (Outcome.NATURAL_EOS, Outcome.LENGTH_CAP, Outcome.ENGINE_ABORTED)
DROPPED_OUTCOMES = (Outcome.ABORTED, Outcome.PRUNED)  # rollouts that leave the loss


@dataclass(frozen=True)
class StopRuleConfig:
    """Everything one rollout's monitor needs. Defaults are the paper's.

    Attributes:
        k1, k2: gates (tokens): marker search from ``k1``; abort decision at ``k2 + grace``.
        threshold: this prompt's confidence threshold for the stop.
        seed: per-rollout seed (see :func:`duet_verl.core.rng.rollout_seed`).
    """

    k1: int
    k2: int
    threshold: float
    seed: int
    min_tokens: int = 200
    grace: int = 150
    check_every: int = 8
    hysteresis: int = 5
    signal: str = "margin"
    eps_len: float = 0.05
    eps_abort: float = 0.05
    markers: MarkerSpec = field(default_factory=MarkerSpec)
    stop_abort: bool = True  # run DUET's marker stop and abort (false: only the probe, if any)
    probe: ProbeRule | None = None  # ARRoL's pruning probe

    def __post_init__(self):
        for name in ("k1", "k2", "min_tokens", "grace"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        require_positive_ints(check_every=self.check_every, hysteresis=self.hysteresis)
        if self.k2 < self.k1:
            raise ValueError(f"k2 ({self.k2}) must be >= k1 ({self.k1})")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if self.signal not in SIGNALS:
            raise ValueError(f"signal must be one of {sorted(SIGNALS)}, got {self.signal!r}")
        if not (isinstance(self.eps_len, int | float) and 0.0 <= self.eps_len <= 1.0):
            raise ValueError(f"eps_len must be in [0, 1], got {self.eps_len!r}")
        # > 0: an eps-kept rollout is weighted 1 / eps_abort, and without any the estimate would be biased
        if not (isinstance(self.eps_abort, int | float) and 0.0 < self.eps_abort <= 1.0):
            raise ValueError(f"eps_abort must be in (0, 1], got {self.eps_abort!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form for ``sampling_params["extra_args"]``."""
        out = asdict(self)
        out["markers"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["markers"].items()}
        out["probe"] = None if self.probe is None else self.probe.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StopRuleConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        data = dict(data)
        markers = data.pop("markers", None)
        if markers is not None and not isinstance(markers, MarkerSpec):
            markers = MarkerSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in markers.items()})
            data["markers"] = markers
        elif markers is not None:
            data["markers"] = markers
        if isinstance(data.get("probe"), dict):
            data["probe"] = ProbeRule.from_dict(data["probe"])
        return cls(**data)


@dataclass
class MonitorRecord:
    """What the trainer learns about a rollout: outcome, length and where things happened."""

    outcome: Outcome = Outcome.RUNNING
    length: int = 0
    marker_at: int | None = None
    ended_at: int | None = None
    length_explored: bool = False  # a stop was skipped with probability eps_len
    probe_features: list[float] | None = None  # what ARRoL's probe read at its detection length
    probe_score: float | None = None  # the head's success probability there

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (outcome as its string value)."""
        out = asdict(self)
        out["outcome"] = self.outcome.value
        return out


_CONTINUE = Action.CONTINUE
_SCANNING, _ARMED, _FREE = 0, 1, 2  # phase A (and before), phase B, no further decisions


class StopAbortMonitor:
    """One rollout's stop/abort state machine. Not thread-safe; one instance per request."""

    __slots__ = (
        "config",
        "record",
        "_t",
        "_pending",
        "_detectors",
        "_next_check",
        "_deadline",
        "_mode",
        "_streak",
        "_threshold",
        "_log_threshold",
        "_hysteresis",
        "_signal",
        "_rng",
        "_probe",
        "_probe_until",
        "_probe_features",
    )

    def __init__(self, config: StopRuleConfig):
        self.config = config
        self.record = MonitorRecord()
        self._t = 0
        self._pending: list[str] = []
        self._detectors = build_detectors(config.markers)
        self._next_check = max(config.min_tokens, config.k1, 1)
        self._deadline = max(config.k2 + config.grace, config.min_tokens, 1)
        self._mode = _SCANNING
        self._streak = 0
        self._threshold = config.threshold
        self._log_threshold = math.log(config.threshold) if config.threshold > 0 else -math.inf
        self._hysteresis = config.hysteresis
        self._signal = None if config.signal == "margin" else SIGNALS[config.signal]
        self._rng = RolloutRandom(config.seed)
        self._probe = config.probe
        self._probe_until = config.probe.at if config.probe is not None else 0
        self._probe_features = ProbeFeatures() if config.probe is not None else None
        if not config.stop_abort:
            self._mode = _FREE

    def on_token(self, text: str, top_logprobs: Sequence[float]) -> Action:
        """Advance by one generated token. ``top_logprobs`` are in descending order (at least one while
        :attr:`reads_signal`; may be empty otherwise)."""
        self._t += 1
        if self._t <= self._probe_until and self._probe_token(top_logprobs):
            return Action.ABORT
        mode = self._mode
        if mode == _ARMED:
            if self._signal is None:  # margin, inlined: p1 - p2 <= p1, so p1 <= threshold needs no second exp
                lp = top_logprobs
                if lp[0] <= self._log_threshold:
                    self._streak = 0
                    return _CONTINUE
                value = math.exp(lp[0]) - math.exp(lp[1]) if len(lp) > 1 else math.exp(lp[0])
            else:
                value = self._signal(top_logprobs)
            if value <= self._threshold:
                self._streak = 0
                return _CONTINUE
            self._streak += 1
            if self._streak < self._hysteresis:
                return _CONTINUE
            return self._confident_stop()
        if mode == _FREE:
            return _CONTINUE
        self._pending.append(text)
        if self._t < self._next_check:
            return _CONTINUE
        return self._checkpoint()

    def advance(
        self, count: int, text_of: Callable[[int], str], top_of: Callable[[int], Sequence[float]] | None
    ) -> Action:
        """Feed every token up to the ``count``-th at once, reading only what a decision needs (a server's one call
        per output of the engine). Tokens before a check or after the monitor went idle are skipped; at a check
        ``text_of(end)`` gives the text of the tokens after the last text read, up to ``end`` tokens; where log-probs
        are read (:attr:`reads_signal`), ``top_of(i)`` gives token ``i``'s top-k log-probs (0-based, descending).
        Returns the first non-continue action (:attr:`tokens_seen` is then where it was taken). Without log-probs
        (``top_of=None``) it stops before the first token whose log-probs would be read, with :attr:`tokens_seen`
        < ``count``. The decisions are those of :meth:`on_token` fed every token."""
        while self._t < count:
            t = self._t
            if self._mode == _ARMED:  # phase B: every token's log-probs, no text
                if top_of is None:
                    return _CONTINUE
                while self._t < count and self._mode == _ARMED:
                    action = self.on_token("", top_of(self._t))
                    if action is not _CONTINUE:
                        return action
                continue
            quiet = self.quiet_until
            if quiet > t:
                self._t = min(quiet, count)
                continue
            reads = self.reads_signal
            if reads and top_of is None:
                return _CONTINUE
            action = self.on_token(text_of(t + 1) if self.text_due else "", top_of(t) if reads else ())
            if action is not _CONTINUE:
                return action
        return _CONTINUE

    @property
    def quiet_until(self) -> int:
        """Token count up to which the monitor needs no token at all (:meth:`skip` may advance to it): the token
        before the next check while scanning (its text comes with the checked token), the current count while a
        probe reads every token or the rule is armed, and no limit once it is idle."""
        if self._t < self._probe_until:
            return self._t
        mode = self._mode
        if mode == _SCANNING:
            return max(self._t, self._next_check - 1)
        return sys.maxsize if mode == _FREE else self._t

    @property
    def text_due(self) -> bool:
        """Whether the next token fed is checked for answer markers: it must carry the text of every token since the
        last one that carried text (any other token's text is ignored, so ``""`` will do)."""
        return self._mode == _SCANNING and self._t + 1 >= self._next_check

    def skip(self, count: int) -> None:
        """Advance ``count`` tokens without feeding them; only up to :attr:`quiet_until`."""
        t = self._t + count
        if count < 0 or t > self.quiet_until:
            raise ValueError(f"cannot skip {count} tokens at {self._t}: the monitor reads token {self.quiet_until + 1}")
        self._t = t

    @property
    def reads_signal(self) -> bool:
        """Whether the next token fed must carry its top-k log-probs (the rule is armed after a marker, or ARRoL's
        probe is reading); before a marker only text is read, so a server may run without log-probs until then."""
        return self._mode == _ARMED or self._t < self._probe_until

    @property
    def idle(self) -> bool:
        """No decision can follow any more (the phases are over and the probe, if any, has read its tokens): the
        server may stop feeding tokens."""
        return self._mode == _FREE and self._t >= self._probe_until

    @property
    def tokens_seen(self) -> int:
        """Tokens fed so far."""
        return self._t

    def finish(self, ended_by: Outcome = Outcome.NATURAL_EOS, length: int | None = None) -> MonitorRecord:
        """The engine ended generation (``ended_by``: EOS, the length cap, or its own abort) after ``length``
        tokens (default: the tokens fed). Returns the final record.

        Also called when the engine did *not* carry out a decision: a stop that did not take effect becomes
        ``ended_by`` with the real length; an abort decision stands (the rollout still leaves the loss)."""
        if ended_by not in ENGINE_ENDINGS:
            raise ValueError(f"ended_by must be one of {[o.value for o in ENGINE_ENDINGS]}, got {ended_by!r}")
        rec = self.record
        rec.length = self._t if length is None else int(length)
        stop_not_applied = rec.outcome is Outcome.STOPPED_AFTER_MARKER
        if rec.outcome is Outcome.RUNNING or stop_not_applied:
            rec.outcome = ended_by
        if rec.ended_at is None or stop_not_applied:
            rec.ended_at = rec.length
        return rec

    # -- internals ---------------------------------------------------------------------------------
    def _scan_pending(self) -> bool:
        text = "".join(self._pending)
        self._pending.clear()
        for detector in self._detectors:  # a loop, not any(<generator>): this runs at every check
            if detector.feed(text):
                return True
        return False

    def _checkpoint(self) -> Action:
        cfg = self.config
        if self._scan_pending():
            self._mode = _ARMED
            self.record.marker_at = self._t
            return Action.CONTINUE
        if self._t >= self._deadline:  # phase C: no marker by k2 + grace
            if self._rng.uniform() < cfg.eps_abort:
                self.record.outcome = Outcome.EPS_KEPT
                self._mode = _FREE
                return Action.CONTINUE
            return self._end(Outcome.ABORTED, Action.ABORT)
        self._next_check = min(self._t + cfg.check_every, self._deadline)
        return Action.CONTINUE

    def _probe_token(self, top_logprobs: Sequence[float]) -> bool:
        """Feed ARRoL's probe; at its detection length score the rollout and draw whether it is pruned."""
        if self.record.outcome is not Outcome.RUNNING and self.record.outcome is not Outcome.EPS_KEPT:
            return False  # a decision was already taken
        features = self._probe_features
        features.add(top_logprobs)
        if self._t < self._probe_until:
            return False
        values = features.values()
        q, keep = self._probe.keep_probability(values)
        self.record.probe_features, self.record.probe_score = values, q
        if self._rng.uniform() < keep:
            return False
        self._end(Outcome.PRUNED, Action.ABORT)
        return True

    def _confident_stop(self) -> Action:
        if self._rng.uniform() < self.config.eps_len:
            self.record.length_explored = True
            self._mode = _FREE
            return Action.CONTINUE
        return self._end(Outcome.STOPPED_AFTER_MARKER, Action.STOP)

    def _end(self, outcome: Outcome, action: Action) -> Action:
        rec = self.record
        rec.outcome = outcome
        rec.length = rec.ended_at = self._t
        self._mode = _FREE
        return action
