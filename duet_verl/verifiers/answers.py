"""Answer extraction and the rule-based checks of the math-style data sources (MATH, GSM8K, GPQA).

MATH, MATH-500 and AIME answers are compared by the maintained ``math-verify`` package (Hugging Face), never by
home-made algebra; GSM8K answers are numbers, GPQA answers letters.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["gpqa_score", "gsm8k_reference", "gsm8k_score", "last_boxed", "math_score"]

_BOX_OPENERS = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced."""
    start = max(text.rfind(opener) for opener in _BOX_OPENERS)
    while start >= 0:
        opener = next(o for o in _BOX_OPENERS if text.startswith(o, start))
        depth, body = 1, start + len(opener)
        for pos in range(body, len(text)):
            if text[pos] == "{":
                depth += 1
            elif text[pos] == "}":
                depth -= 1
                if depth == 0:
                    return text[body:pos].strip()
        # an unclosed box (a truncated rollout): look at the one before it
        start = max(text.rfind(o, 0, start) for o in _BOX_OPENERS)
    return None


def math_score(solution: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer of ``solution`` is equivalent to ``ground_truth`` under math-verify (run in a
    worker process with a hard time limit, see :mod:`duet_verl.verifiers.math_workers`)."""
    from duet_verl.verifiers.math_workers import math_equivalent

    answer = last_boxed(solution)
    if answer is None:
        return 0.0
    return 1.0 if math_equivalent(answer, ground_truth) else 0.0


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _to_decimal(text: str) -> Decimal | None:
    """A number written with optional thousands commas, ``$``/``%`` and a trailing ``.0``; None if it is not one."""
    cleaned = text.strip().replace(",", "").replace("\\$", "").replace("$", "").replace("\\%", "").rstrip("%").strip()
    cleaned = cleaned.removeprefix("\\text{").removesuffix("}").rstrip(".")
    try:
        return Decimal(cleaned)
    except InvalidOperation:
        return None


def gsm8k_reference(answer_field: str) -> str:
    """GSM8K's reference number: what follows ``####`` in its answer field, commas removed."""
    head, sep, tail = answer_field.rpartition("####")
    if not sep or _to_decimal(tail) is None:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {answer_field[-80:]!r}")
    return tail.strip().replace(",", "")


def gsm8k_score(solution: str, ground_truth: str) -> float:
    """1.0 when the boxed answer (else the last number in the text) equals the reference number."""
    reference = _to_decimal(ground_truth)
    if reference is None:
        raise ValueError(f"GSM8K ground truth is not a number: {ground_truth!r}")
    boxed = last_boxed(solution)
    if boxed is not None:
        predicted = _to_decimal(boxed)
    else:
        numbers = _NUMBER.findall(solution)
        predicted = _to_decimal(numbers[-1]) if numbers else None
    return 1.0 if predicted is not None and predicted == reference else 0.0


_LETTER = re.compile(r"^\(?([A-Da-d])\)?[.:]?$")


def gpqa_score(solution: str, ground_truth: str) -> float:
    """1.0 when the last boxed answer is the reference letter (``C``, ``(C)``, ``\\text{C}``)."""
    boxed = last_boxed(solution)
    if boxed is None:
        return 0.0
    boxed = boxed.removeprefix("\\text{").removeprefix("\\textbf{").removesuffix("}").strip()
    match = _LETTER.match(boxed)
    return 1.0 if match and match.group(1).upper() == ground_truth.strip().upper() else 0.0
