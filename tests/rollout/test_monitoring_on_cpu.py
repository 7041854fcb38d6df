"""The engine-agnostic stream monitor on vLLM-shaped outputs, and the CPU engine/server that share it."""

import asyncio
import math
from dataclasses import dataclass

import pytest

from duet_verl.core.controller import DuetController, rollout_stop_rule
from duet_verl.core.settings import DuetSettings
from duet_verl.cpu.hf_engine import CompletionOutput, HFSamplingParams, HFStreamingEngine, Logprob, RequestOutput
from duet_verl.rollout.monitoring import (
    ABORT_FINISH_REASON,
    MonitoredRequest,
    monitored_generate,
    split_duet_rule,
    top_logprobs_of,
)

EOS = 99
SURE = (math.log(0.999), math.log(0.0005))
UNSURE = (math.log(0.5), math.log(0.4))


def rule(**kw):
    base = dict(
        k1=4,
        k2=12,
        threshold=0.9,
        seed=0,
        min_tokens=2,
        grace=2,
        check_every=2,
        hysteresis=2,
        eps_len=0.0,
        eps_abort=0.0,
    )
    base.update(kw)
    return base


@dataclass
class ScriptedEngine:
    """Streams a fixed token script as cumulative vLLM-shaped outputs, ``per_output`` tokens at a time."""

    script: list  # (token_id, text, (lp1, lp2))
    per_output: int = 1
    fail_close: bool = False
    closed: bool = False
    produced: int = 0

    def generate(self, prompt, params, request_id):
        engine = self

        class Stream:
            def __init__(self):
                self.ids, self.lps = [], []

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
                    self.lps.append({tid: Logprob(a, 1, text), 1000 + tid: Logprob(b, 2, "?")})
                finished = engine.produced >= len(engine.script)
                completion = CompletionOutput(0, "", self.ids, self.lps, "stop" if finished else None)
                return RequestOutput(request_id, [completion], finished)

            async def aclose(self):
                if engine.fail_close:
                    raise RuntimeError("engine refused the abort")
                engine.closed = True

        return Stream()


class Params:
    logprobs = None

    def clone(self):
        return Params()


async def collect(engine, request):
    requests = {"r": request} if request is not None else {}
    outs = [o async for o in monitored_generate(engine.generate, requests)([1, 2], Params(), "r")]
    return outs


def script_with_marker(n_before=4, n_after=10, sure_after=True):
    s = [(i, "x", UNSURE) for i in range(n_before)]
    s.append((50, "\\boxed{7}", UNSURE))
    s += [(60 + i, "y", SURE if sure_after else UNSURE) for i in range(n_after)]
    return s


@pytest.mark.parametrize("per_output", [1, 3])
def test_stop_cuts_at_decision_appends_eos_and_closes_engine(per_output):
    engine = ScriptedEngine(script_with_marker(), per_output=per_output)
    request = MonitoredRequest(rule(), EOS)
    outs = asyncio.run(collect(engine, request))
    final = outs[-1]
    assert final.finished and engine.closed
    comp = final.outputs[0]
    assert comp.finish_reason == "stop" and comp.token_ids[-1] == EOS
    # marker noticed at the check at token 6 (checks every 2 from k1=4), two confident tokens -> stop at 8
    assert comp.token_ids[:-1] == [0, 1, 2, 3, 50, 60, 61, 62]
    assert len(comp.logprobs) == len(comp.token_ids) and comp.logprobs[-1][EOS].logprob == 0.0
    report = request.report()
    assert report["outcome"] == "stopped_after_marker" and report["synthetic_eos"] and report["length"] == 8
    assert report["monitor_ns"] > 0


def test_abort_without_marker_returns_partial_tokens():
    engine = ScriptedEngine([(i, "x", SURE) for i in range(40)])
    request = MonitoredRequest(rule(), EOS)
    final = asyncio.run(collect(engine, request))[-1]
    comp = final.outputs[0]
    assert comp.finish_reason == ABORT_FINISH_REASON and engine.closed
    assert comp.token_ids == list(range(14)) and EOS not in comp.token_ids  # k2 + grace
    assert request.report()["outcome"] == "aborted" and not request.report()["synthetic_eos"]


def test_failed_abort_lets_the_rollout_finish_and_counts_it():
    engine = ScriptedEngine([(i, "x", SURE) for i in range(40)], fail_close=True)
    request = MonitoredRequest(rule(), EOS)
    final = asyncio.run(collect(engine, request))[-1]
    assert len(final.outputs[0].token_ids) == 40
    assert request.report()["abort_failed"]


def test_unmonitored_request_passes_through_and_natural_end_is_recorded():
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(5)])
    outs = asyncio.run(collect(engine, None))
    assert len(outs) == 5 and outs[-1].outputs[0].token_ids == [0, 1, 2, 3, 4]
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(5)])
    request = MonitoredRequest(rule(k1=10, k2=20), EOS)
    asyncio.run(collect(engine, request))
    assert request.report()["outcome"] == "natural_eos" and request.report()["length"] == 5


def test_split_duet_rule_and_top_logprobs():
    params = {"temperature": 1.0, "extra_args": {"duet": {**rule(), "eos_token_id": 7, "top_logprobs": 3}, "x": 1}}
    rest, request = split_duet_rule(params)
    assert rest == {"temperature": 1.0, "extra_args": {"x": 1}} and "duet" in params["extra_args"]
    assert request.eos_token_id == 7 and request.top_k == 3
    rest, request = split_duet_rule({"extra_args": {"duet": {**rule(), "eos_token_id": 7}}})
    assert "extra_args" not in rest
    assert split_duet_rule({"temperature": 0.5}) == ({"temperature": 0.5}, None)
    pos = {3: Logprob(-0.1), 9: Logprob(-3.0), 4: Logprob(-1.0)}
    assert top_logprobs_of(pos, 2) == [-0.1, -1.0]


# ---- the CPU engine: real tiny model ----


def test_hf_engine_streams_cumulative_outputs_with_topk(tiny_assets):
    _, tokenizer, model = tiny_assets
    engine = HFStreamingEngine(model, tokenizer)
    params = HFSamplingParams(max_tokens=12, temperature=1.0, logprobs=2, seed=3, ignore_eos=True)

    async def run():
        outs = [o async for o in engine.generate(tokenizer.encode("12+3="), params, "a")]
        return outs

    outs = asyncio.run(run())
    assert len(outs) == 12 and outs[-1].finished and outs[-1].outputs[0].finish_reason == "length"
    comp = outs[-1].outputs[0]
    assert len(comp.token_ids) == len(comp.logprobs) == 12
    for tok, pos in zip(comp.token_ids, comp.logprobs, strict=True):
        ranked = sorted(pos.values(), key=lambda lp: -lp.logprob)
        assert ranked[0].rank == 1 and tok in pos and pos[tok].decoded_token == tokenizer.decode([tok])
        assert all(lp.logprob <= 0 for lp in pos.values())
    again = asyncio.run(run())  # same seed, same tokens
    assert again[-1].outputs[0].token_ids == comp.token_ids


def test_hf_engine_concurrent_requests_and_abort_by_closing(tiny_assets):
    _, tokenizer, model = tiny_assets
    engine = HFStreamingEngine(model, tokenizer)

    async def run():
        long = HFSamplingParams(max_tokens=50, ignore_eos=True, seed=1)
        short = HFSamplingParams(max_tokens=5, ignore_eos=True, seed=2)

        async def take(params, rid, stop_after=None):
            n = 0
            stream = engine.generate([5, 6, 7], params, rid)
            async for out in stream:
                n = len(out.outputs[0].token_ids)
                if stop_after and n >= stop_after:
                    await stream.aclose()
                    break
            return n

        return await asyncio.gather(take(long, "l", stop_after=7), take(short, "s"), take(long, "m"))

    assert asyncio.run(run()) == [7, 5, 50]
    assert not engine._active


def test_monitor_through_the_cpu_engine_matches_config(tiny_assets):
    _, tokenizer, model = tiny_assets
    engine = HFStreamingEngine(model, tokenizer)
    settings = DuetSettings.from_mapping(
        {"stop": {"min_tokens": 2, "grace": 3, "eps_abort": 1e-9, "marker_domains": ["generic"]}}
    )
    plan = DuetController(settings, group_size=8, response_cap=20).plan(["q"], step=1)
    request = MonitoredRequest(rollout_stop_rule(plan.stop_rules[0], "q/0"), tokenizer.eos_token_id)
    requests = {"r": request}

    async def run():
        params = HFSamplingParams(max_tokens=20, ignore_eos=True, seed=0)
        return [o async for o in monitored_generate(engine.generate, requests)([5, 6], params, "r")]

    final = asyncio.run(run())[-1]
    # a random model never writes <answer>..</answer>: aborted at k2 + grace = 14 + 3
    assert request.report()["outcome"] == "aborted"
    assert len(final.outputs[0].token_ids) == int(0.7 * 20) + 3
    assert not engine._active
