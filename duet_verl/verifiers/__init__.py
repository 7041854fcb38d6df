"""Verifiers by ``data_source`` (MATH, MATH-500, AIME 2024, GSM8K, GPQA-Diamond, HumanEval, the toy tasks).

verl loads this file by path (``reward.custom_reward_function.path=<duet_verl>/verifiers/__init__.py``,
``name=compute_score``) as a module outside the package, so it only re-exports through absolute imports.
"""

from duet_verl.verifiers.registry import DATA_SOURCES, compute_score, marker_domains_for

__all__ = ["DATA_SOURCES", "compute_score", "marker_domains_for"]
