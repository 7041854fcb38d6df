"""The data sources DUET's recipes train and evaluate on: each one's verifier and answer-marker domain.

``compute_score`` is the one reward entry point verl calls (``reward.custom_reward_function``); it dispatches on
the row's ``data_source``. The quickstart's synthetic ``duet_toy_*`` sources are scored by
``duet_verl/demo/reward.py``, their one home, through the same dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from duet_verl.demo.reward import TOY_PREFIX
from duet_verl.demo.reward import compute_score as toy_score
from duet_verl.verifiers.answers import gpqa_score, gsm8k_score, math_score
from duet_verl.verifiers.humaneval import humaneval_score

__all__ = ["DATA_SOURCES", "DataSource", "compute_score", "marker_domains_for"]


@dataclass(frozen=True)
class DataSource:
    """A ``data_source`` value: how its rollouts are scored and which answer markers DUET's stop rule looks for."""

    name: str
    score: Callable[[str, str, Mapping[str, Any] | None], float]  # (solution, ground truth, extra_info)
    marker_domain: str  # a key of duet_verl.core.markers.MARKER_DOMAINS


def _math(solution: str, ground_truth: str, extra_info: Mapping[str, Any] | None) -> float:
    return math_score(solution, ground_truth)


def _gsm8k(solution: str, ground_truth: str, extra_info: Mapping[str, Any] | None) -> float:
    return gsm8k_score(solution, ground_truth)


def _gpqa(solution: str, ground_truth: str, extra_info: Mapping[str, Any] | None) -> float:
    return gpqa_score(solution, ground_truth)


def _humaneval(solution: str, ground_truth: str, extra_info: Mapping[str, Any] | None) -> float:
    return humaneval_score(solution, extra_info)


DATA_SOURCES: dict[str, DataSource] = {
    source.name: source
    for source in (
        DataSource("hendrycks_math", _math, "math"),
        DataSource("math500", _math, "math"),
        DataSource("aime2024", _math, "math"),
        DataSource("gsm8k", _gsm8k, "math"),
        DataSource("gpqa_diamond", _gpqa, "math"),
        DataSource("humaneval", _humaneval, "code"),
    )
}


def marker_domains_for(data_source: str) -> tuple[str, ...] | None:
    """The answer-marker domains of a data source's rollouts, or None where the configured default applies."""
    source = DATA_SOURCES.get(str(data_source))
    return (source.marker_domain,) if source else None


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl's custom reward function: the score (1.0 or 0.0) of one rollout, by its ``data_source``."""
    source = DATA_SOURCES.get(str(data_source))
    if source is not None:
        return source.score(solution_str, str(ground_truth), extra_info)
    if str(data_source).startswith(TOY_PREFIX):
        return float(toy_score(data_source, solution_str, ground_truth, extra_info)["score"])
    known = [*DATA_SOURCES, f"{TOY_PREFIX}*"]
    raise ValueError(f"unknown data_source {data_source!r}: the verifiers know {known}")
