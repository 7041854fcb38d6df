"""Reproducible per-rollout randomness: a seed from ``(seed, step, rollout id)`` and a counter-based stream."""

from __future__ import annotations

import hashlib

__all__ = ["RolloutRandom", "rollout_seed", "sample_seed"]

_MASK64 = (1 << 64) - 1


def rollout_seed(seed: int, step: int, rollout_id: str | int) -> int:
    """A 64-bit seed that depends only on the run seed, the training step and the rollout's id."""
    digest = hashlib.blake2b(f"{seed}|{step}|{rollout_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def sample_seed(row_seed: int, sample: int) -> int:
    """The engine seed (63 bits, what ``torch.Generator.manual_seed`` accepts) of sample ``sample`` of a row."""
    return rollout_seed(row_seed, 0, f"sample/{sample}") >> 1


class RolloutRandom:
    """Uniform draws in [0, 1) from SplitMix64 over a counter: cheap to create, no global state."""

    __slots__ = ("_state",)

    def __init__(self, seed: int):
        self._state = seed & _MASK64

    def uniform(self) -> float:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return (z >> 11) * (1.0 / (1 << 53))
