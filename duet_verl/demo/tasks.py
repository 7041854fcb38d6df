"""Synthetic verifiable tasks for CPU runs: prompts, worked solutions, verl parquet files and the reward.

Three families with heterogeneous difficulty and solution length, answers in ``\\boxed{...}``:

* ``arith`` — add or subtract numbers of 1–2 digits; the worked solution goes digit by digit.
* ``search`` — find ``x`` in ``0..N`` with ``a*x+b=c``; the worked solution tries candidates in order,
  so its length grows with the answer.
* ``copy`` — repeat a 3–4 digit number: short and, after the warm start, too easy (every rollout right, so a
  GRPO group carries no gradient), the counterpart of the problems the tiny model never solves.

Solutions for the supervised warm start imitate reasoning models' habits: most end right after the
boxed answer, some keep talking after it, a few never reach one. Plug in your own task with any verl
parquet file (``prompt`` messages, ``reward_model.ground_truth``, ``extra_info.index``) and a reward
function path (``reward.custom_reward_function.path/name``); this project's is
:func:`duet_verl.demo.reward.compute_score`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from duet_verl.demo.reward import TOY_PREFIX, compute_score, extract_boxed

__all__ = [
    "TASKS",
    "Problem",
    "compute_score",
    "extract_boxed",
    "make_problems",
    "make_splits",
    "warm_start_text",
    "write_parquet",
]

_RAMBLE = [" Let me double check this.", " Hmm, wait.", " I think so.", " Looks right.", " Checking again:"]


@dataclass(frozen=True)
class Problem:
    """One verifiable problem."""

    task: str
    prompt: str
    answer: str
    solution: str  # a worked solution ending in \\boxed{answer}
    difficulty: int


def _arith(rng: random.Random) -> Problem:
    digits = rng.choice([1, 2, 2])
    a, b = rng.randrange(10 ** (digits - 1) if digits > 1 else 0, 10**digits), rng.randrange(0, 10**digits)
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    result = a + b if op == "+" else a - b
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        carry_in = carry
        value = x + y + carry_in if op == "+" else x - y - carry_in
        carry = 1 if (op == "+" and value >= 10) or (op == "-" and value < 0) else 0
        steps.append(f"{x}{op}{y}{op + '1' if carry_in else ''}={value}")
    solution = f"{a}{op}{b}. " + "; ".join(steps) + f". So {result}. \\boxed{{{result}}}"
    return Problem("arith", f"Compute {a}{op}{b}.", str(result), solution, digits)


def _search(rng: random.Random) -> Problem:
    a, b, x = rng.randint(1, 4), rng.randint(0, 9), rng.randint(0, 8)
    c = a * x + b
    tries = " ".join(f"x={k}: {a * k + b}." for k in range(x + 1))
    solution = f"Try x from 0. {tries} Found {c}. \\boxed{{{x}}}"
    return Problem("search", f"Find x in 0..8 with {a}*x+{b}={c}.", str(x), solution, 1 + x // 3)


def _copy(rng: random.Random) -> Problem:
    number = rng.randrange(100, 10_000)
    return Problem("copy", f"Repeat {number}.", str(number), f"The number is {number}. \\boxed{{{number}}}", 0)


TASKS = {"arith": _arith, "search": _search, "copy": _copy}
_MAX_DRAWS = 10_000  # draws per problem before a task counts as exhausted (search has 360 distinct problems)


def make_problems(tasks: list[str], count: int, seed: int, exclude: Iterable[str] = ()) -> list[Problem]:
    """``count`` distinct problems drawn round-robin from ``tasks`` (reproducible for a seed), none of whose prompts
    is in ``exclude`` (so a warm-start, training and held-out set can be made disjoint)."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    rng = random.Random(seed)
    taken, problems = set(exclude), []
    for i in range(count):
        task = tasks[i % len(tasks)]
        for _ in range(_MAX_DRAWS):
            problem = TASKS[task](rng)
            if problem.prompt not in taken:
                break
        else:
            raise ValueError(f"task {task!r} has no unused problem left after {len(taken)} taken: ask for fewer")
        taken.add(problem.prompt)
        problems.append(problem)
    return problems


def make_splits(tasks: list[str], sizes: dict[str, int], seed: int) -> dict[str, list[Problem]]:
    """Disjoint problem sets by name (e.g. held-out, RL pool, warm start), drawn in the order given, each from its
    own seed: a set does not change when the sets drawn after it change size (it does when an earlier one does)."""
    splits: dict[str, list[Problem]] = {}
    for k, (name, size) in enumerate(sizes.items()):
        used = [p.prompt for drawn in splits.values() for p in drawn]
        splits[name] = make_problems(tasks, size, seed=seed + 10_000 * k, exclude=used)
    return splits


def warm_start_text(problem: Problem, rng: random.Random, p_ramble: float = 0.25, p_no_answer: float = 0.1) -> str:
    """A supervised target: the worked solution, sometimes followed by talk, sometimes without an answer."""
    roll = rng.random()
    if roll < p_no_answer:
        cut = problem.solution.rfind("\\boxed")
        return problem.solution[:cut] + "".join(rng.choice(_RAMBLE) for _ in range(rng.randint(3, 8)))
    if roll < p_no_answer + p_ramble:
        return problem.solution + "".join(rng.choice(_RAMBLE) for _ in range(rng.randint(1, 4)))
    return problem.solution


def write_parquet(
    problems: list[Problem], path: str | Path, split: str, start_index: int = 0, extra_columns: dict | None = None
) -> Path:
    """Write problems as a verl RL parquet file (chat ``prompt``, ``reward_model``, ``extra_info.index``),
    plus optional extra per-row columns (e.g. DUET's ``duet_prompt_logprob`` feature)."""
    import pandas as pd

    rows = [
        {
            "data_source": f"{TOY_PREFIX}{p.task}",
            "prompt": [{"role": "user", "content": p.prompt}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {"index": start_index + i, "split": split, "difficulty": p.difficulty},
        }
        for i, p in enumerate(problems)
    ]
    frame = pd.DataFrame(rows)
    for name, values in (extra_columns or {}).items():
        frame[name] = list(values)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)
    return path
