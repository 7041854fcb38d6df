"""The verifiers by data_source: answer extraction, math-verify equivalence, GSM8K numbers, GPQA letters, the
dispatcher, and verl's own loader and thread pool calling it."""

import concurrent.futures
from pathlib import Path

import pytest

import duet_verl.verifiers as verifiers
from duet_verl.verifiers import DATA_SOURCES, compute_score, marker_domains_for
from duet_verl.verifiers.answers import gsm8k_reference, last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{3} then \\boxed{4}.", "4"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1,\\{2\\}\\}}", "\\{1,\\{2\\}\\}"),
        ("\\fbox{ 7 }", "7"),
        ("\\boxed{5} and a truncated \\boxed{6", "5"),
        ("no box at all: 5", None),
        ("\\boxed{", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("source", ["hendrycks_math", "math500", "aime2024"])
@pytest.mark.parametrize(
    "solution, ground_truth, expected",
    [
        ("... so the answer is $\\boxed{\\frac{1}{2}}$.", "\\frac12", 1.0),
        ("\\boxed{0.5}", "\\dfrac{1}{2}", 1.0),
        ("first \\boxed{3}, finally \\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ("\\boxed{24}", "24", 1.0),
        ("\\boxed{25}", "24", 0.0),
        ("\\boxed{2\\sqrt{2}} and then \\boxed{3}", "\\sqrt{8}", 0.0),  # the last box counts
        ("the answer is 24", "24", 0.0),  # no box, no answer
    ],
)
def test_math_sources_use_math_verify_on_the_last_box(source, solution, ground_truth, expected):
    assert compute_score(source, solution, ground_truth) == expected


@pytest.mark.parametrize(
    "solution, expected",
    [
        ("She has \\boxed{1,200} pens.", 1.0),
        ("\\boxed{1200.0}", 1.0),
        ("\\boxed{\\$1200}", 1.0),
        ("3*400 = 1200. So 1200 pens.", 1.0),  # no box: the last number
        ("1200 first, then 1201", 0.0),
        ("\\boxed{1201} although 1200", 0.0),  # a box wins over later numbers
        ("no number", 0.0),
    ],
)
def test_gsm8k_compares_numbers(solution, expected):
    assert compute_score("gsm8k", solution, "1200") == expected


def test_gsm8k_reference_is_the_number_after_the_hashes():
    assert gsm8k_reference("3*400=<<3*400=1200>>1200\n#### 1,200") == "1200"
    with pytest.raises(ValueError, match="####"):
        gsm8k_reference("It is 7.")


@pytest.mark.parametrize(
    "solution, expected",
    [("\\boxed{C}", 1.0), ("\\boxed{(C)}", 1.0), ("\\boxed{\\text{C}}", 1.0), ("\\boxed{c}", 1.0), ("\\boxed{B}", 0.0)],
)
def test_gpqa_wants_the_boxed_letter(solution, expected):
    assert compute_score("gpqa_diamond", f"reasoning... {solution}", "C") == expected
    assert compute_score("gpqa_diamond", "The answer is C.", "C") == 0.0  # not boxed


def test_unknown_data_source_names_it_and_the_known_ones():
    with pytest.raises(ValueError, match="unknown data_source 'lighteval/MATH'") as err:
        compute_score("lighteval/MATH", "\\boxed{1}", "1")
    for known in [*DATA_SOURCES, "duet_toy_*"]:
        assert known in str(err.value)


def test_toy_sources_go_to_the_demo_reward():
    assert compute_score("duet_toy_arith", "so \\boxed{12}", "12") == 1.0
    assert compute_score("duet_toy_search", "so \\boxed{11}", "12") == 0.0


def test_marker_domains_follow_the_data_source():
    assert {name: marker_domains_for(name) for name in DATA_SOURCES} == {
        "hendrycks_math": ("math",),
        "math500": ("math",),
        "aime2024": ("math",),
        "gsm8k": ("math",),
        "gpqa_diamond": ("math",),
        "humaneval": ("code",),
    }
    assert marker_domains_for("duet_toy_arith") is None and marker_domains_for("somewhere") is None


def test_verl_loads_the_entry_point_by_path_and_calls_it_from_worker_threads():
    """The recipes' ``reward.custom_reward_function.path/name``, through verl's own loader and its call pattern
    (the reward loop runs the function in an executor thread, where math-verify's signal timeout is unusable)."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    path = Path(verifiers.__file__)
    assert path.name == "__init__.py" and path.parent.name == "verifiers"
    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": str(path), "name": "compute_score"}}})
    reward_fn = get_custom_reward_fn(config)
    cases = [("math500", "\\boxed{\\frac{2}{4}}", "\\frac12", 1.0), ("math500", "\\boxed{3}", "2", 0.0)]
    cases += [("gsm8k", "\\boxed{6}", "6", 1.0), ("gpqa_diamond", "\\boxed{A}", "B", 0.0)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(reward_fn, data_source=s, solution_str=sol, ground_truth=gt, extra_info={"index": 0})
            for s, sol, gt, _ in cases
        ]
        assert [f.result() for f in futures] == [expected for *_, expected in cases]


def test_a_comparison_past_the_hard_limit_scores_zero_and_its_worker_is_replaced():
    """``9^{9^{9^{9}}}`` keeps sympy busy far past any limit; the worker is killed and the next call still works."""
    import time

    from duet_verl.verifiers.math_workers import MathWorkerPool

    pool = MathWorkerPool(size=1, timeout_s=1.0)
    assert pool.equivalent("\\frac{10}{2}", "5") is True  # starts the worker (not counted in the limit)
    worker = pool._idle.queue[0]
    start = time.monotonic()
    assert pool.equivalent("9^{9^{9^{9}}}", "5") is False
    assert time.monotonic() - start < 3.0
    assert not worker.process.is_alive()  # killed, not left computing
    assert pool.equivalent("0.5", "\\frac{1}{2}") is True and pool._idle.queue[0] is not worker


def test_a_worker_that_fails_to_start_gives_its_slot_back(monkeypatch):
    """A failed start (the worker died or timed out) must not use up the pool: with size 1, the next call still
    gets a worker instead of waiting forever for an idle one that will never come."""
    from duet_verl.verifiers import math_workers

    pool, real, attempts = math_workers.MathWorkerPool(size=1, timeout_s=30.0), math_workers._Worker, []

    def failing_once():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the math-verify worker did not start within 300 s")
        return real()

    monkeypatch.setattr(math_workers, "_Worker", failing_once)
    with pytest.raises(RuntimeError, match="did not start"):
        pool.equivalent("1", "1")
    assert pool._started == 0
    assert pool.equivalent("\\frac{10}{2}", "5") is True and len(attempts) == 2
