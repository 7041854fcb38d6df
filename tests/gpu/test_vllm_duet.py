"""GPU tests: DUET's monitor inside vLLM 0.24's AsyncLLM on a tiny local model, on CUDA.

The same checks as the CPU suite's ``tests/vllm/test_engine_on_cpu.py`` (``tests/vllm_checks.py``), plus the
throughput target. Not collected by the CPU suite (CPU tests are ``test_*_on_cpu.py``). On a GPU machine
installed with ``python install.py '.[test]'``: ``python -m pytest tests/gpu -o python_files='test_*.py' -s``.
"""

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from vllm_checks import (  # noqa: E402
    EngineHarness,
    build_model,
    check_abort_returns_partial_tokens,
    check_plain_requests_pass_through,
    check_stop_after_a_real_boxed_answer,
    throughput_ratio,
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from vllm.engine.arg_utils import AsyncEngineArgs

    path = tmp_path_factory.mktemp("tiny")
    tokenizer = build_model(path, hidden=256, layers=4, heads=8)
    args = AsyncEngineArgs(
        model=str(path), max_model_len=1024, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float16"
    )
    engine = EngineHarness(args)
    yield engine, tokenizer
    engine.close()


def test_abort_returns_partial_tokens_and_leaves_nothing_in_the_engine(harness):
    engine, tokenizer = harness
    check_abort_returns_partial_tokens(engine, tokenizer, count=8)


def test_stop_after_a_real_boxed_answer_appends_the_end_of_turn_token(harness):
    engine, tokenizer = harness
    check_stop_after_a_real_boxed_answer(engine, tokenizer)


def test_unmonitored_requests_pass_through(harness):
    engine, _ = harness
    check_plain_requests_pass_through(engine)


def test_throughput_with_monitor_is_at_least_97_percent(harness):
    engine, tokenizer = harness
    ratio = throughput_ratio(engine, tokenizer, requests=128, max_tokens=256)
    print(f"[gpu] throughput with/without monitor (median of 3): {ratio:.3f}")
    assert ratio >= 0.97
