"""A scripted generation engine with vLLM's streaming shapes, and a rollout server on it that runs DUET's monitor.

Tests use it where what matters is *which* tokens come out (a marker, a confident tail, an end-of-turn token),
not a model: the stream, the monitor, the agent loop and everything after are the real code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from duet_verl.adapters.stream_monitor import monitored_generate, split_duet_rule, with_monitor

SURE = (math.log(0.999), math.log(0.0005))  # margin ~0.9985
UNSURE = (math.log(0.5), math.log(0.4))  # margin 0.1


@dataclass
class Logprob:
    """vLLM's ``Logprob``: one candidate token at one position."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """vLLM's ``CompletionOutput`` (cumulative)."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    """vLLM's ``RequestOutput``: one streamed update of a request."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = False


@dataclass
class Params:
    """The fields of vLLM's ``SamplingParams`` that DUET's engine wrapper touches."""

    logprobs: int | None = None
    detokenize: bool = False
    max_tokens: int = 1000
    seed: int | None = None

    def clone(self) -> Params:
        return Params(self.logprobs, self.detokenize, self.max_tokens, self.seed)


@dataclass
class ScriptedEngine:
    """Streams a fixed script of ``(token_id, text, (top-1 log-prob, top-2 log-prob))`` as cumulative outputs,
    ``per_output`` tokens at a time; closing the stream aborts (or fails to, with ``fail_close``). With ``flat``,
    log-probs come in vLLM's own ``FlatLogprobs`` (the sampled token, then ranks 1 and 2), as with
    ``SamplingParams.flat_logprobs``; with ``logprobs=0`` only the sampled token's entry (``None``: no log-probs). A
    ``generate`` whose prompt extends the first call's by ``n`` tokens continues the script from position ``n`` (what a
    deterministic engine does); ``calls`` keeps each call's ``(prompt, params)``."""

    script: list
    per_output: int = 1
    fail_close: bool = False
    finish_reason: str = "stop"
    decoded: bool = True
    flat: bool = False
    closed: bool = False
    produced: int = 0
    received: Any = None
    calls: list = field(default_factory=list)

    def generate(self, prompt, params, request_id):
        engine = self
        engine.received = params
        engine.calls.append((prompt, params))
        ids = prompt.get("prompt_token_ids") if isinstance(prompt, dict) else prompt
        first = engine.calls[0][0]
        first_ids = first.get("prompt_token_ids") if isinstance(first, dict) else first
        engine.produced, engine.closed = len(ids) - len(first_ids), False
        top = params.logprobs  # None: no log-probs; 0: the sampled token's; more: the sampled token's and the top 2

        class Stream:
            def __init__(self):
                self.ids = []
                if engine.flat:
                    from vllm.logprobs import FlatLogprobs

                    self.lps = FlatLogprobs()
                else:
                    self.lps = []

            def __aiter__(self):
                return self

            async def __anext__(self):
                if engine.closed or engine.produced >= len(engine.script):
                    raise StopAsyncIteration
                for _ in range(engine.per_output):
                    if engine.produced >= len(engine.script):
                        break
                    tid, text, (a, b) = engine.script[engine.produced]
                    engine.produced += 1
                    self.ids.append(tid)
                    shown = text if engine.decoded else None
                    if top is None:
                        pass
                    elif engine.flat and top == 0:
                        self.lps.append_fast([tid], [a], iter([1]), [shown])
                    elif engine.flat:
                        self.lps.append_fast([tid, tid, 100_000 + tid], [a, a, b], iter([1, 1, 2]), [shown, shown, "?"])
                    elif top == 0:
                        self.lps.append({tid: Logprob(a, 1, shown)})
                    else:
                        self.lps.append({tid: Logprob(a, 1, shown), 100_000 + tid: Logprob(b, 2, "?")})
                finished = engine.produced >= len(engine.script)
                reason = engine.finish_reason if finished else None
                logprobs = None if top is None else self.lps if engine.flat else list(self.lps)  # flat: vLLM's own
                completion = CompletionOutput(0, "", list(self.ids), logprobs, reason)
                return RequestOutput(request_id, [completion], finished)

            async def aclose(self):
                if engine.fail_close:
                    raise RuntimeError("engine refused the abort")
                engine.closed = True

        return Stream()


def text_script(tokenizer, *parts: tuple[str, tuple[float, float]], eos: bool = False) -> list:
    """A script from ``(text, log-probs)`` parts, one entry per token of ``tokenizer.encode(text)``, optionally
    ending with the tokenizer's end-of-turn token (decoded as ``""``, as vLLM skips special tokens)."""
    script = []
    for text, lps in parts:
        script += [(tid, tokenizer.decode([tid]), lps) for tid in tokenizer.encode(text, add_special_tokens=False)]
    if eos:
        script.append((tokenizer.eos_token_id, "", UNSURE))
    return script


@dataclass
class ScriptedServer:
    """verl's rollout-server contract (token ids in, ``TokenOutput`` out) over scripted engines, one per call in
    call order, with DUET's stop rule applied exactly as DUET's vLLM server applies it."""

    engines: list[ScriptedEngine]
    max_tokens: int = 1000
    calls: list = field(default_factory=list)  # the sampling params of each call
    monitors: list = field(default_factory=list)  # the MonitoredRequest each call ran (None without a rule)

    async def generate(self, prompt_ids, sampling_params, request_id, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.calls.append(sampling_params)
        params, request = split_duet_rule(dict(sampling_params))
        self.monitors.append(request)
        engine = self.engines.pop(0)

        async def plain():
            final = None
            params = Params(logprobs=0, max_tokens=self.max_tokens)  # verl asks for the sampled tokens' log-probs
            stream = monitored_generate(engine.generate)(prompt_ids, params, request_id)
            async for final in stream:
                pass
            completion = final.outputs[0]
            positions = zip(completion.logprobs, completion.token_ids, strict=True)
            return TokenOutput(
                token_ids=list(completion.token_ids),
                log_probs=[position[t].logprob for position, t in positions],
                stop_reason="aborted" if completion.finish_reason == "abort" else "completed",
                extra_fields={"global_steps": 1, "min_global_steps": 1, "max_global_steps": 1},
            )

        return await with_monitor(request, plain())


class InProcessServerManager:
    """verl's ``LLMServerClient.generate`` contract, calling one server in this process instead of over Ray."""

    def __init__(self, server):
        self.server, self.calls = server, []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        self.calls.append(sampling_params)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("mm_processor_output", "priority")}
        output = await self.server.generate(
            prompt_ids=prompt_ids, sampling_params=sampling_params, request_id=request_id, **kwargs
        )
        output.extra_fields.setdefault("min_global_steps", output.extra_fields.get("global_steps"))
        output.extra_fields.setdefault("max_global_steps", output.extra_fields.get("global_steps"))
        return output
