"""Checks of DUET's stream monitor inside a real vLLM ``AsyncLLM`` (driven by
:class:`~duet_verl.vllm_support.harness.EngineHarness`), shared by the CPU suite (``tests/vllm/test_engine_on_cpu.py``)
and the GPU suite (``tests/gpu/test_vllm_duet.py``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from duet_verl.adapters.stream_monitor import ABORT_FINISH_REASON, MonitoredRequest
from duet_verl.core.markers import MarkerSpec
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.protocol import RolloutStopRule
from duet_verl.demo.assets import build_tiny_model, build_tokenizer
from duet_verl.vllm_support.harness import EngineHarness


def build_model(path: Path, hidden: int = 128, layers: int = 2, heads: int = 4):
    """A tiny Qwen2 model whose head size (hidden / heads = 32) every vLLM attention backend supports."""
    tokenizer = build_tokenizer()
    build_tiny_model(tokenizer, path, hidden=hidden, layers=layers, heads=heads)
    return tokenizer


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

    params = SamplingParams(max_tokens=200, temperature=1.0, ignore_eos=True, logprobs=0)  # as verl asks

    async def many():
        return await asyncio.gather(
            *(harness.one([5 + i, 6, 7], params, stop_rule(tokenizer.eos_token_id)) for i in range(count))
        )

    for final, request in harness.run(many()):
        completion = final.outputs[0]
        assert completion.finish_reason == ABORT_FINISH_REASON
        assert len(completion.token_ids) == 48 + 8 == len(completion.logprobs)
        # no marker, so the request ran lean (the log-probs verl asked for, flat, no detokenization: the monitor
        # decodes the sampled tokens itself) in one segment; the server gets back each sampled token's own entry
        assert request.segments == 1 and not request.has_signal
        assert [list(p) for p in completion.logprobs] == [[t] for t in completion.token_ids]
        positions = zip(completion.logprobs, completion.token_ids, strict=True)
        assert all(p[t].logprob <= 0 and p[t].decoded_token is None for p, t in positions)
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


def check_own_decoding_decides_as_vllms_detokenizer(harness: EngineHarness, tokenizer) -> None:
    """The monitor decoding the sampled tokens itself (vLLM detokenizing nothing) takes the same decisions, at the
    same tokens, as when it reads vLLM's detokenized log-probs: the same seeded requests through both wrappers."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from duet_verl.adapters.stream_monitor import monitored_generate

    regex = r"[a-z ]{10,30}\\boxed\{[0-9]{1,3}\}[a-z ]{40}"
    rules = {"k1": 8, "k2": 60, "min_tokens": 4, "check_every": 4, "hysteresis": 2, "threshold": 0.0}
    own, engines = harness.generate, monitored_generate(harness.llm.generate)

    async def run(generate, seed: int, structured: bool):
        harness.generate = generate
        extra = {"structured_outputs": StructuredOutputsParams(regex=regex)} if structured else {}
        params = SamplingParams(max_tokens=100, temperature=1.0, ignore_eos=True, seed=seed, **extra)
        rule = stop_rule(tokenizer.eos_token_id, markers=MarkerSpec(domains=("math",)), **rules)
        final, request = await harness.one([5, 6, 7], params, rule)
        return list(final.outputs[0].token_ids), request.report()

    try:
        for seed in range(4):
            for structured in (True, False):
                ours = harness.run(run(own, seed, structured))
                theirs = harness.run(run(engines, seed, structured))
                assert ours[0] == theirs[0], (seed, structured)
                assert ours[1].to_dict() | {"monitor_ns": 0} == theirs[1].to_dict() | {"monitor_ns": 0}
                assert ours[1].outcome == ("stopped_after_marker" if structured else "aborted"), ours[1]
    finally:
        harness.generate = own


def check_seeded_samples_repeat_in_any_batch(harness: EngineHarness, count: int = 16) -> None:
    """A request with a seed samples the same tokens alone and among other requests whose prompts fill more than one
    prefill step (how the agent loop makes evaluation reproducible); another seed samples other tokens (the
    negative control)."""
    from vllm import SamplingParams

    from duet_verl.core.rng import sample_seed

    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=48, temperature=1.0, top_p=0.95, ignore_eos=True, seed=seed)

    prompt = [5, 6, 7, 8]

    async def alone(seed: int):
        final, _ = await harness.one(prompt, params(seed), None)
        return list(final.outputs[0].token_ids)

    async def crowded(seed: int):
        others = [harness.one([9 + i, *range(10, 110)], params(sample_seed(99, i)), None) for i in range(count)]
        results = await asyncio.gather(harness.one(prompt, params(seed), None), *others)
        return list(results[0][0].outputs[0].token_ids)

    seed = sample_seed(1234, 0)
    first = harness.run(alone(seed))
    assert len(first) == 48
    assert harness.run(crowded(seed)) == first
    assert harness.run(alone(seed)) == first
    assert harness.run(alone(sample_seed(1234, 1))) != first


def check_arrol_probe_prunes_in_the_engine(harness: EngineHarness, tokenizer, count: int = 8) -> None:
    """ARRoL's probe (no DUET stop/abort) in the real engine: with keep ~0 each request ends at the detection
    length, pruned, and leaves the engine; with keep 1 each runs to ``max_tokens``; both report the probe's features
    (and, as nothing needs text, vLLM detokenizes nothing)."""
    from vllm import SamplingParams

    from duet_verl.core.probe import PROBE_FEATURES, ProbeRule

    def request(keep: float) -> MonitoredRequest:
        probe = ProbeRule(16, (0.5, 0.0, -1.0, 0.5), 0.1, keep, keep)
        return stop_rule(tokenizer.eos_token_id, stop_abort=False, probe=probe)

    params = SamplingParams(max_tokens=64, temperature=1.0, ignore_eos=True)

    async def many(keep: float):
        return await asyncio.gather(*(harness.one([5 + i, 6, 7], params, request(keep)) for i in range(count)))

    for final, monitored in harness.run(many(1e-12)):
        completion, report = final.outputs[0], monitored.report()
        assert completion.finish_reason == ABORT_FINISH_REASON and len(completion.token_ids) == 16
        assert report.outcome == "pruned" and report.length == 16 and len(report.probe_features) == len(PROBE_FEATURES)
        assert 0.0 < report.probe_score < 1.0 and monitored.decoder is None
        assert all(p[t].decoded_token is None for p, t in zip(completion.logprobs, completion.token_ids, strict=True))
    from duet_verl.core.monitor import StopAbortMonitor

    fed, on_token = [], StopAbortMonitor.on_token
    StopAbortMonitor.on_token = lambda self, text, top: fed.append(text) or on_token(self, text, top)
    try:
        kept = harness.run(many(1.0))
    finally:
        StopAbortMonitor.on_token = on_token
    for final, monitored in kept:
        report = monitored.report()
        assert len(final.outputs[0].token_ids) == 64 and report.outcome == "length_cap" and report.probe_features
    assert len(fed) == 16 * count and set(fed) == {""}  # the probe's tokens only, without text
    assert harness.unfinished() == 0


def check_lean_requests_decide_as_reading_logprobs_throughout(
    harness: EngineHarness, tokenizer, logprob_tolerance: float = 1e-3
) -> None:
    """A lean request (no top-k log-probs until a marker arms the rule, then a continuation from the prefix) takes
    exactly the decisions, at the same tokens, of the same request reading top-2 log-probs from its first token:
    greedy requests through both wrappers, the marker (any character) seen at the first check, thresholds from
    "stop at once" to "never stop". The returned sampled log-probs agree too; the lean one ran in two segments."""
    from vllm import SamplingParams

    from duet_verl.adapters.stream_monitor import monitored_generate

    lean, reading = harness.generate, monitored_generate(harness.llm.generate, harness.llm.tokenizer, lean=False)
    params = SamplingParams(max_tokens=80, temperature=0.0, ignore_eos=True, logprobs=0)
    rules = {"k1": 16, "k2": 40, "min_tokens": 8, "check_every": 8, "hysteresis": 3}

    from duet_verl.core.monitor import StopAbortMonitor

    fed: list[tuple[int, tuple[float, ...]]] = []  # (token, top log-probs) of every token the monitor read a signal of
    on_token = StopAbortMonitor.on_token

    def reading_on_token(self, text, top):
        if self.reads_signal:
            fed.append((self.tokens_seen + 1, tuple(top)))
        return on_token(self, text, top)

    async def run(generate, threshold: float, prompt: list[int]):
        harness.generate = generate
        fed.clear()
        any_text = MarkerSpec(domains=(), regexes=(r"[\s\S]",))
        rule = stop_rule(tokenizer.eos_token_id, threshold=threshold, markers=any_text, **rules)
        final, request = await harness.one(prompt, params, rule)
        return final.outputs[0], request, list(fed)

    def same_signals(ours: list, theirs: list) -> bool:
        return [t for t, _ in ours] == [t for t, _ in theirs] and all(
            len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < logprob_tolerance
            for (_, a), (_, b) in zip(ours, theirs, strict=True)
        )

    outcomes = set()
    StopAbortMonitor.on_token = reading_on_token
    try:
        for threshold in (0.0, 0.05, 0.2, 1.0):
            for prompt in ([5, 6, 7], [40, 41, 42, 43]):
                ours, lean_request, our_signals = harness.run(run(lean, threshold, prompt))
                theirs, reading_request, their_signals = harness.run(run(reading, threshold, prompt))
                report = lean_request.report()
                assert list(ours.token_ids) == list(theirs.token_ids), (threshold, prompt)
                server = {"monitor_ns": 0, "segments": 0}  # what differs by design: the time and the requests
                assert report.to_dict() | server == reading_request.report().to_dict() | server
                assert report.segments == 2
                # the marker came at the check of token 16; the continuation started right after it, and the monitor
                # read the same signals at the same tokens (none before the marker on either path)
                assert lean_request.segments == 2 and reading_request.segments == 1
                assert report.marker_at == lean_request.offset == 16 and our_signals[0][0] == 17
                assert same_signals(our_signals, their_signals), (threshold, prompt)
                assert len(ours.logprobs) == len(ours.token_ids)
                sampled = [(t, p[t].logprob) for p, t in zip(ours.logprobs, ours.token_ids, strict=True)]
                expected = [(t, p[t].logprob) for p, t in zip(theirs.logprobs, theirs.token_ids, strict=True)]
                assert [t for t, _ in sampled] == [t for t, _ in expected]
                assert max(abs(a - b) for (_, a), (_, b) in zip(sampled, expected, strict=True)) < logprob_tolerance
                outcomes.add(report.outcome)
    finally:
        harness.generate = lean
        StopAbortMonitor.on_token = on_token
    assert outcomes == {"stopped_after_marker", "length_cap"}, outcomes  # thresholds that stop and one that never does
    assert harness.unfinished() == 0
