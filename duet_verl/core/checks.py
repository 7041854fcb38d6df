"""Argument checks shared by the core's constructors: one message format for each kind of bad value."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["require_fractions", "require_positive_ints", "require_probabilities"]


def require_positive_ints(**values: Any) -> None:
    """Raise ``ValueError`` naming the first value that is not a positive integer (a bool is not one)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_probabilities(**values: Any) -> None:
    """Raise ``ValueError`` naming the first value that is not a probability in ``(0, 1]``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be a probability in (0, 1], got {value!r}")


def require_fractions(**values: Any) -> None:
    """Raise ``ValueError`` naming the first value that is not a number in ``[0, 1]``."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
