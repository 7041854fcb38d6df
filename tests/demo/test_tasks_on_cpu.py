import random

import pandas as pd
import pytest

from duet_verl.demo.reward import compute_score, extract_boxed
from duet_verl.demo.tasks import make_problems, make_splits, warm_start_text, write_parquet


def test_problems_are_correct_and_reproducible():
    problems = make_problems(["arith", "search", "copy"], 300, seed=3)
    assert problems == make_problems(["arith", "search", "copy"], 300, seed=3)
    assert {p.task for p in problems} == {"arith", "search", "copy"}
    for p in problems:
        assert compute_score("x", p.solution, p.answer)["score"] == 1.0
        if p.task == "copy":
            assert p.prompt == f"Repeat {p.answer}." and 100 <= int(p.answer) < 10_000
        elif p.task == "arith":
            a, op, b = (
                p.prompt[len("Compute ") : -1].partition("+")
                if "+" in p.prompt
                else p.prompt[len("Compute ") : -1].partition("-")
            )
            assert int(p.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        else:
            eq = p.prompt.split("with ")[1].rstrip(".")
            lhs, c = eq.split("=")
            a, b = lhs.split("*x+")
            assert int(a) * int(p.answer) + int(b) == int(c)
    lengths = [len(p.solution) for p in problems]
    assert max(lengths) > 2 * min(lengths)  # heterogeneous lengths
    with pytest.raises(ValueError, match="unknown task"):
        make_problems(["poetry"], 1, 0)


def test_problems_are_distinct_and_splits_disjoint():
    problems = make_problems(["search"], 300, seed=1)
    assert len({p.prompt for p in problems}) == 300
    sizes = {"val": 256, "train": 128, "warm": 256}  # the quickstart's defaults: 320 of search's 360 problems
    splits = make_splits(["arith", "search"], sizes, seed=0)
    prompts = {name: {p.prompt for p in drawn} for name, drawn in splits.items()}
    assert {name: len(v) for name, v in prompts.items()} == sizes
    assert not (
        prompts["val"] & prompts["train"] or prompts["val"] & prompts["warm"] or prompts["train"] & prompts["warm"]
    )
    # a set does not move when a later one changes size, and a fixed seed repeats
    assert make_splits(["arith", "search"], {"val": 256, "train": 64}, seed=0)["val"] == splits["val"]
    assert make_splits(["arith", "search"], sizes, seed=0) == splits
    with pytest.raises(ValueError, match="no unused problem left"):
        make_problems(["search"], 361, seed=0)


def test_reward_function():
    assert compute_score("s", "so \\boxed{12}", "12") == {"score": 1.0, "acc": True, "has_answer": True}
    assert compute_score("s", "so \\boxed{13}", "12")["score"] == 0.0
    assert compute_score("s", "no answer", "12") == {"score": 0.0, "acc": False, "has_answer": False}
    assert extract_boxed("a \\boxed{ 5 } b \\boxed{6}") == "5"


def test_warm_start_texts_mix_clean_rambling_and_unanswered():
    p = make_problems(["search"], 1, 0)[0]
    rng = random.Random(0)
    texts = [warm_start_text(p, rng) for _ in range(400)]
    clean = sum(t == p.solution for t in texts)
    ramble = sum(t.startswith(p.solution) and t != p.solution for t in texts)
    unanswered = sum("\\boxed" not in t for t in texts)
    assert clean + ramble + unanswered == 400
    assert 0.55 < clean / 400 < 0.8 and 0.15 < ramble / 400 < 0.35 and 0.04 < unanswered / 400 < 0.17


def test_parquet_has_verls_columns(tmp_path):
    path = write_parquet(make_problems(["arith"], 5, 0), tmp_path / "d.parquet", "train", start_index=10)
    frame = pd.read_parquet(path)
    assert list(frame["extra_info"].map(lambda e: e["index"])) == [10, 11, 12, 13, 14]
    assert frame["prompt"][0][0]["role"] == "user" and frame["reward_model"][0]["ground_truth"]
