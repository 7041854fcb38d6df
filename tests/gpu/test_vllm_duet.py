"""GPU tests: DUET's monitor inside vLLM 0.24's AsyncLLM on a tiny local model, on CUDA.

The same checks as the CPU suite's ``tests/vllm/test_engine_on_cpu.py`` (``tests/vllm_checks.py``). Not collected
by the CPU suite (CPU tests are ``test_*_on_cpu.py``); speed is measured by ``duet-verl bench --vllm``, not here.
Each check runs under the harness's own timeout (``EngineHarness.run``, 300 s) on the engine's one event loop.
On a GPU machine installed with ``python install.py '.[test]'`` (or through ``scripts/gpu_check.sh``):
``python -m pytest tests/gpu -o python_files='test_*.py'``.
"""

import os

import pytest

# vLLM forks its engine process unless CUDA is already initialised in this one; under pytest the CUDA probe below
# half-initialises it, and the forked engine then fails ("Cannot re-initialize CUDA in forked subprocess")
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from duet_verl.vllm_support.harness import EngineHarness  # noqa: E402

from vllm_checks import (  # noqa: E402
    build_model,
    check_abort_returns_partial_tokens,
    check_arrol_probe_prunes_in_the_engine,
    check_lean_requests_decide_as_reading_logprobs_throughout,
    check_own_decoding_decides_as_vllms_detokenizer,
    check_plain_requests_pass_through,
    check_stop_after_a_real_boxed_answer,
)


# Every check runs with vLLM's async scheduling on (vLLM's default on a GPU: the engine may compute one token past a
# stop or abort before it lands) and off: DUET cuts the returned stream at its decision, so the checks' exact lengths
# and end-of-turn tokens must hold either way.
@pytest.fixture(scope="module", params=[True, False], ids=["async_scheduling", "sync_scheduling"])
def harness(request, tmp_path_factory):
    from vllm.engine.arg_utils import AsyncEngineArgs

    path = tmp_path_factory.mktemp("tiny")
    tokenizer = build_model(path, hidden=256, layers=4, heads=4)  # head size 64: FlashAttention 3 on Hopper has it
    args = AsyncEngineArgs(
        model=str(path),
        max_model_len=1024,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
        dtype="float16",
        async_scheduling=request.param,
    )
    engine = EngineHarness(args)
    assert bool(engine.llm.vllm_config.scheduler_config.async_scheduling) == request.param
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


def test_own_decoding_decides_as_vllms_detokenizer(harness):
    engine, tokenizer = harness
    check_own_decoding_decides_as_vllms_detokenizer(engine, tokenizer)


def test_arrol_probe_prunes_in_the_engine(harness):
    engine, tokenizer = harness
    check_arrol_probe_prunes_in_the_engine(engine, tokenizer)


def test_lean_requests_decide_as_reading_logprobs_throughout(harness):
    engine, tokenizer = harness  # float16: a continuation's prefill and a decode step round differently
    check_lean_requests_decide_as_reading_logprobs_throughout(engine, tokenizer, logprob_tolerance=2e-2)
