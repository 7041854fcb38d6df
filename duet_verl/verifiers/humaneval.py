"""HumanEval: the completion and the task's tests run together in the sandbox; passing them all scores 1."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from duet_verl.verifiers.sandbox import SandboxLimits, run_python

__all__ = ["HUMANEVAL_KEYS", "extract_code", "humaneval_program", "humaneval_score"]

HUMANEVAL_KEYS = ("prompt_code", "test", "entry_point")  # what extra_info must carry for this verifier

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)```", re.S)


def extract_code(solution: str) -> str:
    """The last fenced code block of a chat answer, or the whole text when it has none (a plain completion)."""
    blocks = _FENCE.findall(solution)
    return blocks[-1] if blocks else solution


def humaneval_program(solution: str, prompt_code: str, test: str, entry_point: str) -> str:
    """The program the sandbox runs: the task's prompt code (imports, helpers, the signature), the model's code,
    the task's tests and the call of ``check``. A completion that defines ``entry_point`` itself replaces the
    prompt's stub; one that does not is taken as the function's body, continuing the prompt."""
    code = extract_code(solution)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.M):
        body = f"{prompt_code}\n\n{code}"
    else:
        body = f"{prompt_code}{code}"
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def humaneval_score(solution: str, extra_info: Mapping[str, Any] | None, limits: SandboxLimits | None = None) -> float:
    """1.0 when the completion passes the task's tests in the sandbox within its limits, else 0.0."""
    missing = [key for key in HUMANEVAL_KEYS if not (extra_info or {}).get(key)]
    if missing:
        raise ValueError(f"humaneval: extra_info lacks {missing} (written by `duet-verl prepare-data`)")
    program = humaneval_program(solution, extra_info["prompt_code"], extra_info["test"], extra_info["entry_point"])
    return 1.0 if run_python(program, limits).passed else 0.0
