"""GPU tests: DUET's monitor inside vLLM 0.24's AsyncLLM on a tiny local model.

Not collected by the CPU suite (CPU tests are ``test_*_on_cpu.py``). On a GPU machine with the ``gpu`` extra:
``python -m pytest tests/gpu -o python_files='test_*.py' -s``.
"""

import asyncio
import time
import uuid

import pytest

torch = pytest.importorskip("torch")
vllm = pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from vllm import SamplingParams  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: E402

from duet_verl.cpu.assets import build_tiny_model, build_tokenizer  # noqa: E402
from duet_verl.rollout.monitoring import ABORT_FINISH_REASON, MonitoredRequest, monitored_generate  # noqa: E402

MAX_TOKENS = 256


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, path, hidden=256, layers=4, heads=4)
    args = AsyncEngineArgs(
        model=str(path), max_model_len=1024, gpu_memory_utilization=0.3, enforce_eager=True, dtype="float16"
    )
    llm = AsyncLLM.from_engine_args(args)
    yield llm, tokenizer
    llm.shutdown()


def rule(**kw):
    base = dict(
        k1=16,
        k2=48,
        threshold=1.0,
        seed=0,
        min_tokens=8,
        grace=8,
        check_every=8,
        hysteresis=5,
        eps_len=0.0,
        eps_abort=0.0,
        markers={"domains": ["code"], "regexes": [], "regex_overlap": 256},
    )
    base.update(kw)
    return base


async def run_requests(llm, tokenizer, count, monitored, rule_kw=None):
    requests = {}
    generate = monitored_generate(llm.generate, requests)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, ignore_eos=True)

    async def one(i):
        rid = uuid.uuid4().hex
        if monitored:
            requests[rid] = MonitoredRequest(rule(**(rule_kw or {})), tokenizer.eos_token_id)
        final = None
        async for out in generate({"prompt_token_ids": [5 + i % 50, 6, 7]}, params, rid):
            final = out
        return final, requests.get(rid)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(count)))
    return results, time.perf_counter() - start


def test_abort_takes_effect_and_returns_partial_tokens(engine):
    llm, tokenizer = engine
    results, _ = asyncio.run(run_requests(llm, tokenizer, 8, monitored=True))
    for final, request in results:
        completion = final.outputs[0]
        assert completion.finish_reason == ABORT_FINISH_REASON
        assert len(completion.token_ids) == 48 + 8  # k2 + grace, partial tokens kept
        assert request.report()["outcome"] == "aborted"
    assert llm.output_processor.get_num_unfinished_requests() == 0  # vLLM dropped them


def test_throughput_with_monitor_is_at_least_97_percent(engine):
    llm, tokenizer = engine
    never = {"k1": MAX_TOKENS, "k2": MAX_TOKENS, "grace": MAX_TOKENS}  # watches every token, never decides
    asyncio.run(run_requests(llm, tokenizer, 64, monitored=False))  # warm up
    ratios = []
    for _ in range(3):
        _, off = asyncio.run(run_requests(llm, tokenizer, 128, monitored=False))
        results, on = asyncio.run(run_requests(llm, tokenizer, 128, monitored=True, rule_kw=never))
        assert all(len(f.outputs[0].token_ids) == MAX_TOKENS for f, _ in results)
        ratios.append(off / on)
    ratios.sort()
    print(f"[gpu] throughput on/off ratios {ratios}, median {ratios[1]:.3f}")
    assert ratios[1] >= 0.97
