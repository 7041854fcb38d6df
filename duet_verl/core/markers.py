"""Incremental answer-marker detection (SPEC §3).

A rollout's text arrives in small pieces. Each detector keeps a little state and looks only at the
*new* text (plus a short overlap so a marker split across pieces is still found), so the total work
is linear in the response length whatever the text contains. Nothing here backtracks over the
whole tail: balanced-bracket markers such as ``\\boxed{...}`` are matched by counting brackets, and
user regexes only ever see a bounded window.

Detectors are created from a :class:`MarkerSpec` (picklable, shippable to a rollout server) by
:func:`build_detectors`. Domains: ``math``, ``code``, ``generic``; any domain can be combined with
user-supplied regexes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "MARKER_DOMAINS",
    "BalancedMarker",
    "LiteralMarker",
    "MarkerDetector",
    "MarkerSpec",
    "PairedMarker",
    "RegexMarker",
    "RepeatedLiteralMarker",
    "build_detectors",
]


class MarkerDetector:
    """Base class: ``feed(new_text)`` returns True once the marker has been seen completely."""

    found: bool = False

    def feed(self, text: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class _TailWindowMarker(MarkerDetector):
    """Searches each new piece together with the last ``keep`` characters seen before it."""

    def __init__(self, keep: int):
        self._keep = keep
        self._tail = ""
        self.found = False

    def _matches(self, window: str) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def feed(self, text: str) -> bool:
        if self.found:
            return True
        window = self._tail + text
        if self._matches(window):
            self.found = True
        else:
            self._tail = window[-self._keep :] if self._keep else ""
        return self.found


class LiteralMarker(_TailWindowMarker):
    """A fixed string, e.g. ``## Final Answer``."""

    def __init__(self, literal: str):
        if not literal:
            raise ValueError("literal marker must be non-empty")
        super().__init__(len(literal) - 1)
        self.literal = literal

    def _matches(self, window: str) -> bool:
        return self.literal in window


class BalancedMarker(MarkerDetector):
    """``prefix`` followed by a balanced bracket group, e.g. ``\\boxed{ ... {nested} ... }``.

    After the opener is found, brackets are counted on each new piece with ``str.count`` and the
    closing position is only searched (linearly) in the piece where the depth can reach zero.
    """

    def __init__(self, prefix: str, open_char: str, close_char: str):
        self.opener = LiteralMarker(prefix + open_char)
        self.open_char, self.close_char = open_char, close_char
        self._depth = 0  # > 0 once inside the group
        self.found = False

    def feed(self, text: str) -> bool:
        if self.found:
            return True
        if self._depth == 0:
            before = self.opener._tail
            if not self.opener.feed(text):
                return False
            window = before + text
            start = window.index(self.opener.literal) + len(self.opener.literal)
            text = window[start:]
            self._depth = 1
        return self._consume(text)

    def _consume(self, text: str) -> bool:
        opens, closes = text.count(self.open_char), text.count(self.close_char)
        if closes < self._depth:  # cannot close inside this piece
            self._depth += opens - closes
            return False
        depth = self._depth
        for ch in text:
            if ch == self.open_char:
                depth += 1
            elif ch == self.close_char:
                depth -= 1
                if depth == 0:
                    self.found = True
                    return True
        self._depth = depth
        return False


class RepeatedLiteralMarker(MarkerDetector):
    """A literal seen ``times`` times (non-overlapping), e.g. a closed fenced code block (two fences)."""

    def __init__(self, literal: str, times: int):
        if not literal or times < 1:
            raise ValueError("RepeatedLiteralMarker needs a non-empty literal and times >= 1")
        self.literal, self.times = literal, times
        self._keep = len(literal) - 1
        self._tail = ""
        self._seen = 0
        self.found = False

    def feed(self, text: str) -> bool:
        if self.found:
            return True
        window = self._tail + text
        self._seen += window.count(self.literal)
        cut = window.rfind(self.literal)
        rest = window[cut + len(self.literal) :] if cut >= 0 else window
        self._tail = rest[-self._keep :] if self._keep else ""
        self.found = self._seen >= self.times
        return self.found


class PairedMarker(MarkerDetector):
    """An opening literal later followed by a closing literal, e.g. ``<answer> ... </answer>``."""

    def __init__(self, open_literal: str, close_literal: str):
        self._open = LiteralMarker(open_literal)
        self._close = LiteralMarker(close_literal)
        self.found = False

    def feed(self, text: str) -> bool:
        if self.found:
            return True
        if not self._open.found:
            before = self._open._tail
            if not self._open.feed(text):
                return False
            window = before + text
            text = window[window.index(self._open.literal) + len(self._open.literal) :]
        self.found = self._close.feed(text)
        return self.found


class RegexMarker(_TailWindowMarker):
    """A user regex searched in ``overlap`` characters of old text plus the new text.

    A match must fit in ``overlap + len(new text)`` characters; the window is bounded, so even a
    pathological pattern costs a bounded amount per call.
    """

    def __init__(self, pattern: str | re.Pattern, overlap: int = 64):
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        try:
            self.pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        except re.error as err:
            raise ValueError(f"invalid marker regex {pattern!r}: {err}") from err
        super().__init__(overlap)
        self.overlap = overlap

    def _matches(self, window: str) -> bool:
        return self.pattern.search(window) is not None


def _math() -> list[MarkerDetector]:
    return [
        BalancedMarker("\\boxed", "{", "}"),
        BalancedMarker("\\boxed", "[", "]"),
        LiteralMarker("## Final Answer"),
        RegexMarker(r"Final [Aa]nswer:[ \t]*\S", overlap=24),
    ]


def _code() -> list[MarkerDetector]:
    return [RepeatedLiteralMarker("```", times=2)]


def _generic() -> list[MarkerDetector]:
    return [
        PairedMarker("<answer>", "</answer>"),
        PairedMarker("<final_answer>", "</final_answer>"),
        RegexMarker(r"Therefore, the answer is[ \t]*\S", overlap=32),
    ]


MARKER_DOMAINS = {"math": _math, "code": _code, "generic": _generic}


@dataclass(frozen=True)
class MarkerSpec:
    """Which markers to look for: built-in ``domains`` plus user ``regexes`` (with their window overlap)."""

    domains: tuple[str, ...] = ("math", "generic")
    regexes: tuple[str, ...] = ()
    regex_overlap: int = 256

    def __post_init__(self):
        unknown = [d for d in self.domains if d not in MARKER_DOMAINS]
        if unknown:
            raise ValueError(f"domains has unknown marker domain(s) {unknown}; known: {sorted(MARKER_DOMAINS)}")
        if not self.domains and not self.regexes:
            raise ValueError("domains and regexes are both empty: at least one marker is needed")
        for pattern in self.regexes:
            try:
                RegexMarker(pattern)
            except ValueError as err:
                raise ValueError(f"regexes: {err}") from err


def build_detectors(spec: MarkerSpec) -> list[MarkerDetector]:
    """Fresh detectors (one set per rollout) for ``spec``."""
    detectors: list[MarkerDetector] = []
    for domain in spec.domains:
        detectors.extend(MARKER_DOMAINS[domain]())
    detectors.extend(RegexMarker(p, overlap=spec.regex_overlap) for p in spec.regexes)
    return detectors
