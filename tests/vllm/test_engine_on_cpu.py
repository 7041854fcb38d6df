"""DUET's stream monitor inside vLLM 0.24's real ``AsyncLLM`` on the CPU (the engine verl's server runs)."""

import os

import pytest

from vllm_checks import (
    EngineHarness,
    build_model,
    check_abort_returns_partial_tokens,
    check_arrol_probe_prunes_in_the_engine,
    check_lean_requests_decide_as_reading_logprobs_throughout,
    check_own_decoding_decides_as_vllms_detokenizer,
    check_plain_requests_pass_through,
    check_seeded_samples_repeat_in_any_batch,
    check_stop_after_a_real_boxed_answer,
)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    from vllm.engine.arg_utils import AsyncEngineArgs

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    path = tmp_path_factory.mktemp("tiny_vllm")
    tokenizer = build_model(path)
    # as verl runs it on the CPU (duet_verl/cpu/overrides.py): whole prefills, which seeded requests need there
    args = AsyncEngineArgs(
        model=str(path),
        max_model_len=512,
        max_num_batched_tokens=512,
        enable_chunked_prefill=False,
        enforce_eager=True,
        dtype="float32",
        seed=0,
    )
    engine = EngineHarness(args)
    yield engine, tokenizer
    engine.close()


def test_the_cpu_build_reports_a_cpu_version_and_platform():
    import importlib.metadata

    from vllm.platforms import current_platform

    from duet_verl.vllm_support import VLLM_VERSION

    assert importlib.metadata.version("vllm") == f"{VLLM_VERSION}+cpu" and current_platform.is_cpu()


def test_abort_returns_partial_tokens_and_leaves_nothing_in_the_engine(harness):
    engine, tokenizer = harness
    check_abort_returns_partial_tokens(engine, tokenizer)


def test_stop_after_a_real_boxed_answer_appends_the_end_of_turn_token(harness):
    engine, tokenizer = harness
    check_stop_after_a_real_boxed_answer(engine, tokenizer)


def test_unmonitored_requests_pass_through(harness):
    engine, _ = harness
    check_plain_requests_pass_through(engine)


def test_own_decoding_decides_as_vllms_detokenizer(harness):
    engine, tokenizer = harness
    check_own_decoding_decides_as_vllms_detokenizer(engine, tokenizer)


def test_seeded_samples_repeat_in_any_batch(harness):
    engine, _ = harness
    check_seeded_samples_repeat_in_any_batch(engine)


def test_arrol_probe_prunes_in_the_engine(harness):
    engine, tokenizer = harness
    check_arrol_probe_prunes_in_the_engine(engine, tokenizer)


def test_lean_requests_decide_as_reading_logprobs_throughout(harness):
    engine, tokenizer = harness
    check_lean_requests_decide_as_reading_logprobs_throughout(engine, tokenizer)
