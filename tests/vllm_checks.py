"""Checks of DUET's stream monitor inside a real vLLM ``AsyncLLM``, shared by the CPU suite
(``tests/vllm/test_engine_on_cpu.py``) and the GPU suite (``tests/gpu/test_vllm_duet.py``).

An :class:`EngineHarness` owns one engine and the one event loop it lives on (vLLM's output handler belongs to the
loop that started it: a second ``asyncio.run`` gets ``EngineDeadError``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from duet_verl.adapters.stream_monitor import ABORT_FINISH_REASON, MonitoredRequest, monitored_generate, with_monitor
from duet_verl.core.markers import MarkerSpec
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.protocol import RolloutStopRule
from duet_verl.demo.assets import build_tiny_model, build_tokenizer


def build_model(path: Path, hidden: int = 128, layers: int = 2, heads: int = 4):
    """A tiny Qwen2 model whose head size (hidden / heads = 32) every vLLM attention backend supports."""
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, path, hidden=hidden, layers=layers, heads=heads)
    return tokenizer


@dataclass
class _Produced:
    output: object
    extra_fields: dict


class EngineHarness:
    """One ``AsyncLLM`` on one event loop; :meth:`run` drives a coroutine on that loop."""

    def __init__(self, engine_args):
        from vllm.v1.engine.async_llm import AsyncLLM

        self.loop = asyncio.new_event_loop()

        async def start():
            return AsyncLLM.from_engine_args(engine_args)

        self.llm = self.loop.run_until_complete(start())
        self.generate = monitored_generate(self.llm.generate)

    def run(self, coro, timeout: float = 300.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        """Shut the engine down, then end its loop's tasks (its output handler) before closing the loop."""
        self.llm.shutdown()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def one(self, prompt_ids: list[int], params, request: MonitoredRequest | None):
        """One request through DUET's engine wrapper, as a server runs it: (final output, request)."""
        request_id = uuid.uuid4().hex

        async def produce():
            final = None
            async for final in self.generate({"prompt_token_ids": prompt_ids}, params, request_id):
                pass
            return _Produced(final, {})

        return (await with_monitor(request, produce())).output, request

    def unfinished(self) -> int:
        return self.llm.output_processor.get_num_unfinished_requests()


def stop_rule(eos_token_id: int, **kw) -> MonitoredRequest:
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
        eps_abort=1e-12,
        markers=MarkerSpec(domains=("code",)),
    )
    base.update(kw)
    return MonitoredRequest(RolloutStopRule(StopRuleConfig(**base), eos_token_id, 2))


def check_abort_returns_partial_tokens(harness: EngineHarness, tokenizer, count: int = 4) -> None:
    """No marker by K2 + grace: each request ends there, with its partial tokens, and leaves the engine."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=200, temperature=1.0, ignore_eos=True)

    async def many():
        return await asyncio.gather(
            *(harness.one([5 + i, 6, 7], params, stop_rule(tokenizer.eos_token_id)) for i in range(count))
        )

    for final, request in harness.run(many()):
        completion = final.outputs[0]
        assert completion.finish_reason == ABORT_FINISH_REASON
        assert len(completion.token_ids) == 48 + 8 == len(completion.logprobs)
        report = request.report()
        assert report.outcome == "aborted" and report.length == 56 and not report.synthetic_eos
    assert harness.unfinished() == 0


def check_stop_after_a_real_boxed_answer(harness: EngineHarness, tokenizer) -> None:
    """Structured output forces ``\\boxed{65}`` then filler: the monitor sees the marker in vLLM's detokenized
    text, stops once confident (threshold 0: any positive margin), and the end-of-turn token is appended."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    regex = r"x{20}\\boxed\{65\}y{60}"
    params = SamplingParams(
        max_tokens=120, temperature=1.0, structured_outputs=StructuredOutputsParams(regex=regex), ignore_eos=True
    )
    request = stop_rule(
        tokenizer.eos_token_id,
        k1=8,
        k2=100,
        min_tokens=4,
        check_every=4,
        hysteresis=2,
        threshold=0.0,
        markers=MarkerSpec(domains=("math",)),
    )
    final, request = harness.run(harness.one([5, 6, 7], params, request))
    completion = final.outputs[0]
    report = request.report()
    assert report.outcome == "stopped_after_marker", report
    assert report.synthetic_eos and completion.token_ids[-1] == tokenizer.eos_token_id
    assert len(completion.token_ids) == report.length + 1 == len(completion.logprobs)
    text = tokenizer.decode(completion.token_ids[:-1])
    assert "\\boxed{65}" in text and report.marker_at >= text.index("}") + 1 - 8  # noticed at a later check
    assert harness.unfinished() == 0


def check_plain_requests_pass_through(harness: EngineHarness) -> None:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=32, temperature=1.0, ignore_eos=True)
    final, request = harness.run(harness.one([5, 6, 7], params, None))
    assert request is None and len(final.outputs[0].token_ids) == 32 and final.outputs[0].logprobs is None


def throughput_ratio(harness: EngineHarness, tokenizer, requests: int, max_tokens: int, rounds: int = 3) -> float:
    """Median over ``rounds`` of (time without monitor) / (time with a monitor that never decides)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, ignore_eos=True)
    never = {"k1": max_tokens, "k2": max_tokens, "grace": max_tokens}

    async def batch(monitored: bool) -> float:
        start = time.perf_counter()
        rules = [stop_rule(tokenizer.eos_token_id, **never) if monitored else None for _ in range(requests)]
        await asyncio.gather(*(harness.one([5 + i % 50, 6, 7], params, r) for i, r in enumerate(rules)))
        return time.perf_counter() - start

    harness.run(batch(False))  # warm up
    ratios = sorted(harness.run(batch(False)) / harness.run(batch(True)) for _ in range(rounds))
    return ratios[len(ratios) // 2]
