"""Reward for the synthetic tasks: the boxed answer must equal the ground truth.

verl loads custom reward functions from a *file path* without registering the module, so this file is
kept free of dataclasses and package-relative imports.
"""

import re

__all__ = ["TOY_PREFIX", "compute_score", "extract_boxed", "text_after_answer"]

TOY_PREFIX = "duet_toy_"  # data_source of the synthetic tasks: duet_toy_{task}

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def extract_boxed(text: str) -> str | None:
    """The content of the first ``\\boxed{...}`` (no nesting needed for these tasks), or None."""
    match = _BOXED.search(text)
    return match.group(1).strip() if match else None


def text_after_answer(text: str) -> str | None:
    """What follows the first ``\\boxed{...}`` (stripped), or None without one."""
    match = _BOXED.search(text)
    return text[match.end() :].strip() if match else None


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kw):
    """verl reward function: 1.0 for the right boxed answer, else 0.0; ``acc`` is logged too."""
    predicted = extract_boxed(solution_str)
    correct = predicted is not None and predicted == str(ground_truth).strip()
    return {"score": 1.0 if correct else 0.0, "acc": bool(correct), "has_answer": predicted is not None}
