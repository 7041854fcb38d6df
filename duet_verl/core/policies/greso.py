"""GRESO (Zheng et al., "Act Only When It Pays", arXiv 2506.02177): skip, before rollout, prompts whose recent
groups were zero-variance (all rewards equal), with a probability that grows with how long they have stayed so.

What this follows from the paper: a prompt's reward trace decides; a prompt whose last ``z`` observed groups (one per
epoch it was drawn) were all zero-variance is rolled out with probability ``p^z`` and skipped otherwise, ``p`` being
an exploration probability kept separately for *easy* (all correct) and *hard* (all wrong) prompts, started at 0.5
(the paper's runs) and moved by a small step after each step so that the share of zero-variance groups tracks a
target (0.25 in the paper's runs); prompts never seen or with a mixed last group are always rolled out.

Reconstructed or adapted here (documented in the README): the step size (0.01), its floor and ceiling (``min_explore``
and 1), and the split of the target between the two kinds (each kind's share of the step's observed groups is
compared with half the target). GRESO keeps the *training* batch size by sampling more prompts; in this plug-in the
batch is verl's, so the tokens a skip saves go to the step's other prompts instead: the admitted prompts share the
token budget evenly, up to ``G`` rollouts each (a skipped prompt gets none). If every prompt of a batch would be
skipped, all are admitted (a step needs rollouts). The skip draw is reproducible per (seed, step, prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from duet_verl.core.allocator import even_allocation
from duet_verl.core.checks import require_probabilities
from duet_verl.core.policies.base import AllocationRequest, BudgetPolicy, PolicyAllocation
from duet_verl.core.rng import RolloutRandom, rollout_seed

__all__ = ["EASY", "HARD", "GresoPolicy", "admit_probability"]

EASY, HARD = "easy", "hard"  # a zero-variance group: every rollout correct / every rollout wrong


def admit_probability(explore: float, streak: int) -> float:
    """The probability that a prompt whose last ``streak`` groups were zero-variance is rolled out: ``explore**streak``
    (1 for a prompt never seen or last seen with a mixed group)."""
    return float(explore) ** int(streak)


class GresoPolicy(BudgetPolicy):
    """GRESO's probabilistic pre-rollout skip of zero-variance prompts; state: each prompt's streak and kind, and the
    two exploration probabilities."""

    name = "greso"

    def __init__(
        self,
        p_easy: float = 0.5,
        p_hard: float = 0.5,
        target_zero_variance: float = 0.25,
        adjust_step: float = 0.01,
        min_explore: float = 0.05,
        seed: int = 0,
        max_rollouts: int | None = None,
    ):
        require_probabilities(p_easy=p_easy, p_hard=p_hard, min_explore=min_explore)
        if not (isinstance(target_zero_variance, int | float) and 0.0 <= target_zero_variance <= 1.0):
            raise ValueError(f"target_zero_variance must be in [0, 1], got {target_zero_variance!r}")
        if not (isinstance(adjust_step, int | float) and 0.0 <= adjust_step <= 1.0):
            raise ValueError(f"adjust_step must be in [0, 1], got {adjust_step!r}")
        if min(p_easy, p_hard) < min_explore:
            raise ValueError(f"min_explore ({min_explore}) must not exceed p_easy ({p_easy}) or p_hard ({p_hard})")
        self.explore = {EASY: float(p_easy), HARD: float(p_hard)}
        self.target, self.adjust_step, self.min_explore = float(target_zero_variance), float(adjust_step), min_explore
        self.seed, self.max_rollouts = int(seed), max_rollouts
        self.streaks: dict[str, tuple[int, str]] = {}  # prompt -> (zero-variance groups in a row, their kind)

    def admit(self, prompt_ids: Sequence[str], step: int) -> np.ndarray:
        """Bool per prompt: rolled out this step (the reproducible skip draw)."""
        out = np.ones(len(prompt_ids), dtype=bool)
        for i, pid in enumerate(prompt_ids):
            streak, kind = self.streaks.get(pid, (0, EASY))
            if streak > 0:
                draw = RolloutRandom(rollout_seed(self.seed, step, f"greso/{pid}")).uniform()
                out[i] = draw < admit_probability(self.explore[kind], streak)
        return out

    def allocate(self, request: AllocationRequest) -> PolicyAllocation:
        admitted = self.admit(request.prompt_ids, request.step)
        everyone_skipped = not admitted.any()
        if everyone_skipped:
            admitted[:] = True
        cap = self.max_rollouts or request.group_size
        alloc = even_allocation(request.lengths, request.budget, admitted, cap)
        metrics = {
            "duet/greso_skipped_fraction": float(np.mean(~admitted)),
            "duet/greso_all_skipped": float(everyone_skipped),
            "duet/greso_p_easy": self.explore[EASY],
            "duet/greso_p_hard": self.explore[HARD],
        }
        return PolicyAllocation(alloc, metrics=metrics)

    def observe(self, prompt_ids: Sequence[str], rewards: Sequence[Sequence[float]], step: int) -> dict[str, float]:
        """Update each prompt's streak from its group; then move each kind's exploration probability toward the
        target share of zero-variance groups (down when that kind exceeds half the target, up otherwise)."""
        counts = {EASY: 0, HARD: 0}
        groups = 0
        for pid, group in zip(prompt_ids, rewards, strict=True):
            values = np.asarray(group, dtype=np.float64)
            if values.size < 2:  # one rollout shows no variance either way: the trace is left as it was
                continue
            groups += 1
            if np.all(values == values[0]):
                kind = EASY if values[0] > 0 else HARD
                counts[kind] += 1
                streak, last = self.streaks.get(pid, (0, kind))
                self.streaks[pid] = (streak + 1 if last == kind else 1, kind)
            else:
                self.streaks.pop(pid, None)
        if groups:
            for kind in (EASY, HARD):
                share = counts[kind] / groups
                move = -self.adjust_step if share > self.target / 2 else self.adjust_step
                self.explore[kind] = float(np.clip(self.explore[kind] + move, self.min_explore, 1.0))
        return {
            "duet/greso_zero_variance_fraction": (counts[EASY] + counts[HARD]) / groups if groups else float("nan"),
            "duet/greso_tracked_prompts": float(len(self.streaks)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"explore": dict(self.explore), "streaks": {pid: list(v) for pid, v in self.streaks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.explore = {EASY: float(state["explore"][EASY]), HARD: float(state["explore"][HARD])}
        self.streaks = {pid: (int(v[0]), str(v[1])) for pid, v in state["streaks"].items()}
