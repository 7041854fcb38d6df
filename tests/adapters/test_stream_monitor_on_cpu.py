"""The engine-agnostic stream monitor on vLLM-shaped outputs (the real ``AsyncLLM`` is in ``tests/vllm``)."""

import asyncio
from dataclasses import dataclass

import pytest

from duet_verl.adapters.stream_monitor import (
    ABORT_FINISH_REASON,
    MonitoredRequest,
    monitored_generate,
    split_duet_rule,
    top_logprobs_of,
    with_monitor,
)
from duet_verl.core.controller import DuetController
from duet_verl.core.monitor import Action, Outcome, StopRuleConfig
from duet_verl.core.protocol import RolloutStopRule
from duet_verl.core.settings import DuetSettings

from scripted_engine import SURE, UNSURE, Logprob, Params, ScriptedEngine

EOS = 99


def monitored(top_k=2, **kw):
    """A monitored request as the server builds it from the wire."""
    wire = RolloutStopRule(StopRuleConfig(**rule(**kw)), EOS, top_k).to_dict()
    return MonitoredRequest(RolloutStopRule.from_dict(wire))


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
        eps_abort=1e-12,
    )
    base.update(kw)
    return base


@dataclass
class Collected:
    """What a server's plain ``generate`` returns: the engine outputs plus ``extra_fields``."""

    outputs: list
    extra_fields: dict


async def collect(engine, request, params=None, request_id="r"):
    """A server's request: the engine stream consumed under ``with_monitor`` (``request`` current)."""

    async def produce():
        stream = monitored_generate(engine.generate)([1, 2], params or Params(), request_id)
        return Collected([o async for o in stream], {})

    return (await with_monitor(request, produce())).outputs


def gather(engine, request, params=None):
    return asyncio.run(collect(engine, request, params))


def script_with_marker(n_before=4, n_after=10, sure_after=True):
    s = [(i, "x", UNSURE) for i in range(n_before)]
    s.append((50, "\\boxed{7}", UNSURE))
    s += [(60 + i, "y", SURE if sure_after else UNSURE) for i in range(n_after)]
    return s


@pytest.mark.parametrize("per_output", [1, 3])
def test_stop_cuts_at_decision_appends_eos_and_closes_engine(per_output):
    engine = ScriptedEngine(script_with_marker(), per_output=per_output)
    request = monitored()
    outs = gather(engine, request)
    final = outs[-1]
    assert final.finished and engine.closed
    comp = final.outputs[0]
    assert comp.finish_reason == "stop" and comp.token_ids[-1] == EOS
    # marker noticed at the check at token 6 (checks every 2 from k1=4), two confident tokens -> stop at 8
    assert comp.token_ids[:-1] == [0, 1, 2, 3, 50, 60, 61, 62]
    assert len(comp.logprobs) == len(comp.token_ids) and comp.logprobs[-1][EOS].logprob == 0.0
    report = request.report()
    assert report.outcome == "stopped_after_marker" and report.synthetic_eos and report.length == 8
    assert report.monitor_ns > 0


@pytest.mark.parametrize("script", ["stop", "abort", "natural"])
def test_flat_logprobs_give_the_same_decisions_and_sampled_logprobs(script):
    """vLLM's FlatLogprobs (what DUET asks for) and per-position dicts: the same decision at the same token, the
    same report, and the final output keeps only the sampled token's log-prob at each position."""
    scripts = {
        "stop": script_with_marker(),
        "abort": [(i, "x", SURE) for i in range(40)],
        "natural": [(i, "x", UNSURE) for i in range(6)],
    }
    results = []
    for flat in (False, True):
        request = monitored() if script != "natural" else monitored(k1=10, k2=20)
        final = gather(ScriptedEngine(scripts[script], flat=flat), request)[-1].outputs[0]
        results.append((final, request.report()))
    (dicts, report_dicts), (flat, report_flat) = results
    assert report_flat.to_dict() | {"monitor_ns": 0} == report_dicts.to_dict() | {"monitor_ns": 0}
    assert flat.token_ids == dicts.token_ids and flat.finish_reason == dicts.finish_reason
    for out in (dicts, flat):
        assert [list(p) for p in out.logprobs] == [[t] for t in out.token_ids]  # the sampled token only
    assert [p[t].logprob for p, t in zip(flat.logprobs, flat.token_ids, strict=True)] == [
        p[t].logprob for p, t in zip(dicts.logprobs, dicts.token_ids, strict=True)
    ]


def test_abort_without_marker_returns_partial_tokens():
    engine = ScriptedEngine([(i, "x", SURE) for i in range(40)])
    request = monitored()
    final = gather(engine, request)[-1]
    comp = final.outputs[0]
    assert comp.finish_reason == ABORT_FINISH_REASON and engine.closed
    assert comp.token_ids == list(range(14)) and EOS not in comp.token_ids  # k2 + grace
    assert request.report().outcome == "aborted" and not request.report().synthetic_eos


def test_failed_abort_returns_the_finished_uncut_rollout_and_records_it():
    engine = ScriptedEngine([(i, "x", SURE) for i in range(40)], fail_close=True, finish_reason="length")
    request = monitored()
    final = gather(engine, request)[-1]
    assert final.finished and final.outputs[0].token_ids == list(range(40))
    assert final.outputs[0].finish_reason == "length"
    report = request.report()
    # the abort decision stands (the rollout leaves the loss), with the real length
    assert report.abort_failed and report.outcome == "aborted" and report.length == 40
    engine = ScriptedEngine(script_with_marker(), fail_close=True)
    request = monitored()
    final = gather(engine, request)[-1]
    comp = final.outputs[0]
    assert final.finished and len(comp.token_ids) == 15 and EOS not in comp.token_ids
    report = request.report()
    # a stop that did not take effect: the rollout ended naturally, no synthetic end-of-turn token
    assert report.abort_failed and report.outcome == "natural_eos" and report.length == 15
    assert not report.synthetic_eos


def test_an_abort_by_the_engine_itself_is_recorded_as_such():
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(6)], finish_reason="abort")
    request = monitored(k1=10, k2=20)
    final = gather(engine, request)[-1]
    assert final.outputs[0].finish_reason == "abort"
    assert request.report().outcome == "engine_aborted" and request.report().length == 6


def test_a_stop_on_the_last_allowed_token_appends_no_end_of_turn():
    engine = ScriptedEngine(script_with_marker())
    request = monitored()
    final = gather(engine, request, Params(max_tokens=8))[-1]
    comp = final.outputs[0]
    assert comp.token_ids == [0, 1, 2, 3, 50, 60, 61, 62] and comp.finish_reason == "stop"
    report = request.report()
    assert report.outcome == "stopped_after_marker" and not report.synthetic_eos and report.length == 8
    # one more token of room: the end-of-turn token is appended
    request = monitored()
    final = gather(ScriptedEngine(script_with_marker()), request, Params(max_tokens=9))[-1]
    assert final.outputs[0].token_ids[-1] == EOS and request.report().synthetic_eos


def test_monitored_requests_ask_for_detokenized_topk_on_a_copy_and_fail_without_text():
    engine = ScriptedEngine(script_with_marker())
    params = Params(logprobs=None, detokenize=False)
    gather(engine, monitored(top_k=3), params)
    assert engine.received is not params and engine.received.detokenize and engine.received.logprobs == 3
    assert params.detokenize is False and params.logprobs is None
    with pytest.raises(RuntimeError, match="decoded_token=None"):
        gather(ScriptedEngine(script_with_marker(), decoded=False), monitored())


def test_concurrent_requests_sharing_one_request_id_keep_their_own_monitor():
    """verl's full_determinism names every rollout ``det-{priority}``: monitors must not be keyed by id."""
    stop_engine, abort_engine = (
        ScriptedEngine(script_with_marker()),
        ScriptedEngine([(i, "x", SURE) for i in range(40)]),
    )
    stop_request, abort_request = monitored(), monitored()

    async def both():
        return await asyncio.gather(
            collect(stop_engine, stop_request, request_id="det-0"),
            collect(abort_engine, abort_request, request_id="det-0"),
        )

    stopped, aborted = asyncio.run(both())
    assert stop_request.report().outcome == "stopped_after_marker" and stopped[-1].outputs[0].token_ids[-1] == EOS
    assert abort_request.report().outcome == "aborted" and len(aborted[-1].outputs[0].token_ids) == 14


def test_unmonitored_request_passes_through_and_natural_end_is_recorded():
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(5)])
    outs = gather(engine, None)
    assert len(outs) == 5 and outs[-1].outputs[0].token_ids == [0, 1, 2, 3, 4]
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(5)])
    request = monitored(k1=10, k2=20)
    gather(engine, request)
    assert request.report().outcome == "natural_eos" and request.report().length == 5


def test_split_duet_rule_and_top_logprobs():
    wire = RolloutStopRule(StopRuleConfig(**rule()), 7, 3).to_dict()
    params = {"temperature": 1.0, "extra_args": {"duet": wire, "x": 1}}
    rest, monitored = split_duet_rule(params)
    assert rest == {"temperature": 1.0, "extra_args": {"x": 1}} and "duet" in params["extra_args"]
    assert monitored.eos_token_id == 7 and monitored.top_k == 3
    rest, _ = split_duet_rule({"extra_args": {"duet": wire}})
    assert "extra_args" not in rest
    with pytest.raises(ValueError, match="missing keys"):
        split_duet_rule({"extra_args": {"duet": {k: v for k, v in wire.items() if k != "top_logprobs"}}})
    with pytest.raises(ValueError, match="unknown keys"):
        split_duet_rule({"extra_args": {"duet": {**wire, "surprise": 1}}})
    assert split_duet_rule({"temperature": 0.5}) == ({"temperature": 0.5}, None)
    pos = {3: Logprob(-0.1), 9: Logprob(-3.0), 4: Logprob(-1.0)}
    assert top_logprobs_of(pos, 2) == [-0.1, -1.0]


def test_a_planned_rule_aborts_a_marker_less_stream_at_k2_plus_grace():
    """The controller's plan, turned into one rollout's rule as the agent loop does, drives the engine wrapper."""
    settings = DuetSettings.from_mapping(
        {"stop": {"min_tokens": 2, "grace": 3, "eps_abort": 1e-9, "marker_domains": ["generic"]}}
    )
    plan = DuetController(settings, group_size=8, response_cap=20).plan(["q"], step=1)
    request = MonitoredRequest(plan.stop_rules[0].for_rollout("q/0", EOS))
    engine = ScriptedEngine([(i, "x", UNSURE) for i in range(20)])
    final = gather(engine, request)[-1]
    # no <answer>..</answer> by K2 = 0.7 * 20: aborted after the grace period, with the partial tokens
    assert request.report().outcome == "aborted" and final.outputs[0].finish_reason == ABORT_FINISH_REASON
    assert final.outputs[0].token_ids == list(range(int(0.7 * 20) + 3)) and engine.closed


@pytest.mark.parametrize("per_output", [1, 5])
def test_skipping_unread_tokens_takes_the_same_decisions_as_feeding_every_one(per_output):
    """The monitor fed through the stream (tokens before a check skipped, text only at checks) decides exactly as
    the same monitor fed every token with its text."""
    from duet_verl.core.monitor import StopAbortMonitor

    scripts = [script_with_marker(n_before=9, n_after=12), [(i, "x", SURE) for i in range(40)]]
    for script in scripts:
        request = monitored(k1=6, k2=20, check_every=3)
        gather(ScriptedEngine(script, per_output=per_output), request)
        reference = StopAbortMonitor(StopRuleConfig(**rule(k1=6, k2=20, check_every=3)))
        for k, (_, text, top) in enumerate(script):
            if reference.on_token(text, list(top)) is not Action.CONTINUE:
                break
        assert request.decided_at == k + 1 and request.monitor.record == reference.record
        assert request.monitor.record.outcome in (Outcome.STOPPED_AFTER_MARKER, Outcome.ABORTED)


def probe_only(keep: float, at: int = 6) -> MonitoredRequest:
    """ARRoL's request as the server gets it: the probe alone, DUET's stop/abort off."""
    from duet_verl.core.probe import PROBE_FEATURES, ProbeRule

    probe = ProbeRule(at, (0.0,) * len(PROBE_FEATURES), 0.0, keep, keep)
    return monitored(stop_abort=False, probe=probe)


def test_a_probe_prunes_at_its_detection_length_without_reading_any_text():
    engine = ScriptedEngine(script_with_marker(n_before=2, n_after=30), decoded=False)  # vLLM decodes nothing
    request = probe_only(keep=1e-12)
    final = gather(engine, request, Params(detokenize=True))[-1]
    assert engine.received.detokenize is False and request.decoder is None  # nobody decodes: no text is needed
    comp = final.outputs[0]
    assert comp.finish_reason == ABORT_FINISH_REASON and engine.closed and comp.token_ids == [0, 1, 50, 60, 61, 62]
    report = request.report()
    assert report.outcome == "pruned" and report.length == 6 and len(report.probe_features) == 4


def test_a_kept_probe_lets_the_rollout_run_without_duets_stop_and_stops_reading(monkeypatch):
    from duet_verl.core.monitor import StopAbortMonitor

    fed = []
    on_token = StopAbortMonitor.on_token
    monkeypatch.setattr(
        StopAbortMonitor, "on_token", lambda self, text, top: fed.append(text) or on_token(self, text, top)
    )
    engine = ScriptedEngine(script_with_marker(n_before=2, n_after=30), decoded=False)
    request = probe_only(keep=1.0)
    final = gather(engine, request)[-1]
    comp = final.outputs[0]
    # a marker followed by confident tokens, where DUET would stop: ARRoL runs on to the natural end
    assert comp.finish_reason == "stop" and len(comp.token_ids) == 33 and not engine.closed
    report = request.report()
    assert report.outcome == "natural_eos" and report.length == 33 and report.probe_score == 0.5
    assert len(fed) == 6 and set(fed) == {""}  # the monitor read the probe's 6 tokens, no text, and nothing after
    assert request.monitor.tokens_seen == 33 and request.monitor.idle


class ByteBackend:
    """A byte-level tokenizer backend: token id = byte, so one character can span several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


@pytest.mark.parametrize("decoder", ["span", "byte_table"])
def test_a_check_inside_a_multi_byte_character_still_sees_the_text_before_it(decoder):
    """The check at the deadline falls between the bytes of "中": the marker before it must still be seen there
    (handing out nothing for the whole span would abort this rollout), exactly as per-token decoding sees it."""
    from types import SimpleNamespace

    from duet_verl.adapters.token_text import ByteSpanDecoder, SpanDecoder
    from duet_verl.core.monitor import StopAbortMonitor

    ids = list(("x" * 10 + "\\boxed{1}" + "中").encode())
    config = dict(k1=0, k2=20, threshold=0.5, min_tokens=0, grace=0, check_every=4, hysteresis=1, eps_abort=1e-9)
    request = monitored(**config)
    table = [bytes([b]) for b in range(256)]
    request.decoder = SpanDecoder(ByteBackend(), []) if decoder == "span" else ByteSpanDecoder(table)
    positions = [{t: Logprob(-0.01, 1, None), 1000: Logprob(-5.0, 2, None)} for t in ids]
    request.update(SimpleNamespace(token_ids=ids, logprobs=positions))
    reference, shown = StopAbortMonitor(StopRuleConfig(**rule(**config))), ""
    for k in range(len(ids)):  # what vLLM's incremental detokenizer shows token by token
        text = ByteBackend().decode(ids[: k + 1])
        piece = "" if text.endswith("\ufffd") else text[len(shown) :]
        shown = shown if text.endswith("\ufffd") else text
        if reference.on_token(piece, [-0.01, -5.0]) is not Action.CONTINUE:
            break
    assert reference.record.outcome is Outcome.STOPPED_AFTER_MARKER and reference.record.marker_at == 20
    assert request.monitor.record == reference.record and request.decided_at == k + 1


def lean_run(tokenizer, script, lean: bool, per_output: int = 1, fail_close: bool = False, seed: int | None = None):
    """One request with a marker rule through the wrapper holding the tokenizer (lean where it can) or forced to read
    log-probs throughout: (engine, final output, monitored request)."""
    engine = ScriptedEngine(script, per_output=per_output, fail_close=fail_close)
    request = monitored(k1=4, k2=40, min_tokens=2, grace=4, check_every=4, hysteresis=3)

    async def produce():
        generate = monitored_generate(engine.generate, tokenizer, lean=lean)
        params = Params(logprobs=0, max_tokens=100, seed=seed)  # verl's: the sampled tokens' log-probs
        stream = generate({"prompt_token_ids": [1, 2]}, params, "r")
        return Collected([o async for o in stream], {})

    outputs = asyncio.run(with_monitor(request, produce())).outputs
    assert [o.finished for o in outputs].count(True) == 1 and outputs[-1].finished  # one final output, last
    return engine, outputs[-1], request


@pytest.mark.parametrize("per_output", [1, 3])
def test_a_lean_request_is_continued_at_its_marker_check_and_decides_as_reading_throughout(tiny_assets, per_output):
    """Without top-k log-probs until the marker check, then a continuation from the prompt plus the kept tokens with
    top-2: the same tokens, log-probs and report as the request reading top-2 from its first token."""
    from scripted_engine import text_script

    tokenizer = tiny_assets[1]
    script = text_script(tokenizer, ("x" * 5, UNSURE), ("\\boxed{7}", UNSURE), ("y" * 20, SURE), eos=True)
    engine, final, request = lean_run(tokenizer, script, lean=True, per_output=per_output)
    reading_engine, expected, reading = lean_run(tokenizer, script, lean=False, per_output=per_output)
    report = request.report()
    assert report.outcome == "stopped_after_marker" and report.synthetic_eos
    server = {"monitor_ns": 0, "segments": 0}  # what differs by design: the time and the engine requests
    assert report.to_dict() | server == reading.report().to_dict() | server and report.segments == 2
    assert final.outputs[0].token_ids == expected.outputs[0].token_ids
    lps = [[(t, e.logprob) for t, e in p.items()] for p in final.outputs[0].logprobs]
    assert lps == [[(t, e.logprob) for t, e in p.items()] for p in expected.outputs[0].logprobs]
    # lean: the caller's log-probs (0) until the check that found the marker, then top-2 from prompt + kept tokens
    (first, first_params), (second, second_params) = engine.calls
    marker = report.marker_at
    assert first_params.logprobs == 0 and second_params.logprobs == 2 and request.segments == 2
    assert second["prompt_token_ids"] == [1, 2, *(t for t, _, _ in script[:marker])]
    assert second_params.max_tokens == 100 - marker and request.offset == marker
    assert [p.logprobs for _, p in reading_engine.calls] == [2] and reading.segments == 1


def test_a_lean_request_that_cannot_be_continued_runs_to_its_end_and_records_it(tiny_assets):
    """Closing the first segment at the marker fails: the rollout runs to its natural end uncut, with nothing more
    decided, and ``abort_failed`` is recorded."""
    from scripted_engine import text_script

    tokenizer = tiny_assets[1]
    script = text_script(tokenizer, ("x" * 5, UNSURE), ("\\boxed{7}", UNSURE), ("y" * 20, SURE), eos=True)
    engine, final, request = lean_run(tokenizer, script, lean=True, fail_close=True)
    report = request.report()
    assert len(engine.calls) == 1 and final.finished and final.outputs[0].token_ids == [t for t, _, _ in script]
    assert report.abort_failed and report.outcome == "natural_eos" and report.marker_at is not None


def test_a_seeded_request_reads_logprobs_from_its_first_token(tiny_assets):
    """A continuation would restart a seeded generator: a seeded request is never split."""
    from scripted_engine import text_script

    tokenizer = tiny_assets[1]
    script = text_script(tokenizer, ("x" * 5, UNSURE), ("\\boxed{7}", UNSURE), ("y" * 20, SURE), eos=True)
    engine, _, request = lean_run(tokenizer, script, lean=True, seed=7)
    assert [p.logprobs for _, p in engine.calls] == [2] and request.segments == 1
    assert request.report().outcome == "stopped_after_marker"


def test_a_lean_segment_the_engine_aborted_is_returned_not_continued(tiny_assets):
    """verl pausing generation aborts requests in the engine: a lean segment that comes back aborted, past its marker
    check, is returned as the engine ended it (``engine_aborted``), with no continuation submitted."""
    from scripted_engine import text_script

    tokenizer = tiny_assets[1]
    script = text_script(tokenizer, ("x" * 5, UNSURE), ("\\boxed{7}", UNSURE), ("y" * 6, SURE))
    engine = ScriptedEngine(script, per_output=len(script), finish_reason="abort")
    request = monitored(k1=4, k2=40, min_tokens=2, grace=4, check_every=4, hysteresis=3)

    async def produce():
        stream = monitored_generate(engine.generate, tokenizer)({"prompt_token_ids": [1, 2]}, Params(logprobs=0), "r")
        return Collected([o async for o in stream], {})

    final = asyncio.run(with_monitor(request, produce())).outputs[-1]
    report = request.report()
    assert len(engine.calls) == 1 and request.segments == 1 and final.outputs[0].token_ids == [t for t, _, _ in script]
    assert report.outcome == "engine_aborted" and report.marker_at is not None and not report.abort_failed


@pytest.mark.parametrize(
    "setting",
    [
        {"seed": 0},
        {"stop": ["\n\n"]},
        {"bad_words": ["foo"]},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"prompt_logprobs": 0},
        {"n": 2},
        {"extra_args": {"kv_transfer_params": {}}},
    ],
    ids=lambda setting: next(iter(setting)),
)
def test_a_request_a_split_would_change_reads_logprobs_from_its_first_token(tiny_assets, setting):
    """vLLM's own ``SamplingParams``: each setting a continuation would not reproduce keeps the request whole; the
    same request without it runs lean (the control)."""
    from vllm import SamplingParams

    from duet_verl.adapters.stream_monitor import _lean_capable
    from duet_verl.adapters.token_text import TokenTexts

    tokenizer = tiny_assets[1]
    request = monitored(k1=4, k2=40, min_tokens=2, grace=4, check_every=4, hysteresis=3)
    request.decoder = TokenTexts(tokenizer).decoder([1, 2])
    prompt = {"prompt_token_ids": [1, 2], "multi_modal_data": {}}
    assert _lean_capable(prompt, SamplingParams(max_tokens=64, logprobs=0), request)
    assert not _lean_capable(prompt, SamplingParams(max_tokens=64, logprobs=0, **setting), request)


def test_a_continued_request_that_never_gets_confident_ends_naturally_once(tiny_assets):
    """After the marker the tail stays unsure: the continuation runs to the end-of-turn token, and the server gets
    one final output, the whole rollout, as when reading log-probs throughout."""
    from scripted_engine import text_script

    tokenizer = tiny_assets[1]
    script = text_script(tokenizer, ("x" * 5, UNSURE), ("\\boxed{7}", UNSURE), ("y" * 9, UNSURE), eos=True)
    engine, final, request = lean_run(tokenizer, script, lean=True, per_output=2)
    _, expected, reading = lean_run(tokenizer, script, lean=False, per_output=2)
    assert request.segments == 2 and request.report().outcome == "natural_eos" and not request.report().synthetic_eos
    assert final.outputs[0].token_ids == expected.outputs[0].token_ids == [t for t, _, _ in script]
    assert len(final.outputs[0].logprobs) == len(script)
