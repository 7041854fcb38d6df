"""Run DUET's stop/abort monitor over a generation stream, for any engine.

Engines stream *cumulative* outputs shaped like vLLM's ``RequestOutput``: ``output.outputs[0]`` has
``token_ids`` (all tokens so far), ``logprobs`` (one ``{token_id: Logprob}`` dict per token, where a
``Logprob`` has ``logprob``, ``rank`` and ``decoded_token``), ``finish_reason`` and ``finished`` on the
request. One output may carry several new tokens.

:class:`MonitoredRequest` feeds each new token to a :class:`~duet_verl.core.monitor.StopAbortMonitor`.
:func:`monitored_stream` wraps an engine's async generator: on a stop it closes the engine's stream
(which aborts the request in the engine) and yields a final output cut at the decision, with the
end-of-turn token appended (unless the decision fell on the last token ``max_tokens`` allows); on an abort
it yields the partial output with finish reason ``"duet_abort"``. The appended end-of-turn token has no
real log-prob: its entry is a placeholder (``0.0``) and the agent loop masks that position out of the loss
(``synthetic_eos``). If closing the stream fails, the request runs to its natural end, the uncut output is
returned finished and ``abort_failed`` is recorded.

The monitor reads only what can change a decision: before a marker check it reads nothing (those tokens are skipped),
at a check it reads the text of the tokens since the last check, after a marker only log-probs, and once it can decide
nothing more (an ε-kept or length-explored rollout, a probe past its detection length) nothing at all. Where the
server hands over its tokenizer (DUET's vLLM server does), the monitor decodes that text itself, once per check
(:mod:`~duet_verl.adapters.token_text`), and the request goes to vLLM with ``detokenize=False``: vLLM then no longer
decodes every sampled token and log-prob alternative in its front end, the larger part of what DUET's log-probs cost
(measured with ``duet-verl bench --vllm``). Without a tokenizer (or with stop strings, which need vLLM's detokenizer)
the engine's ``decoded_token`` is read instead. A rule without DUET's stop/abort (ARRoL's probe alone) reads no text.

Log-probs are read only after an answer marker (and by ARRoL's probe), so where the monitor decodes itself a request
first runs *lean*: with exactly the log-probs its caller asked for (none, or verl's sampled-token log-prob), which
is what a request without DUET costs. When a marker arms the rule, that first segment is closed at the marker check
and a continuation (prompt + the segment's tokens, served from vLLM's prefix cache) asks for the top-k log-probs the
rule reads from there on; its outputs are stitched behind the segment, so the server sees one request. Tokens the
engine had generated past the check are dropped unread and generated again, a fresh draw from the same distribution,
so the decisions (rule, signals, rollout seeds) are those of one request reading log-probs throughout. Requests that
cannot be continued exactly run with log-probs from the start (:data:`UNSPLIT_IF_SET`, :data:`UNSPLIT_IF_NONZERO`:
a sampling seed would restart, stop strings, bad words and penalties on output tokens would not see the head, ...;
also multi-modal prompts, ``n > 1``, non-cumulative outputs and a probe). A segment the engine itself aborted (verl
pausing generation) is returned as it is, never continued.

A server hands a request's monitor to the engine wrapper through a :class:`contextvars.ContextVar`
(:func:`with_monitor` / :func:`monitored_generate`), never through a table keyed by request id: verl's
``rollout.full_determinism`` gives every rollout the same request id (``det-{priority}``).
"""

from __future__ import annotations

import contextvars
import copy
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from duet_verl.adapters.token_text import ByteSpanDecoder, SpanDecoder, TokenTexts
from duet_verl.core.monitor import Action, Outcome, StopAbortMonitor
from duet_verl.core.protocol import WIRE_KEY, RolloutReport, RolloutStopRule

__all__ = [
    "ABORT_FINISH_REASON",
    "MonitoredRequest",
    "engine_ending",
    "monitored_generate",
    "monitored_stream",
    "sampled_logprobs",
    "split_duet_rule",
    "top_logprobs_of",
    "with_monitor",
]

logger = logging.getLogger(__name__)

ABORT_FINISH_REASON = "duet_abort"
_ENGINE_FINISH = {"length": Outcome.LENGTH_CAP, "abort": Outcome.ENGINE_ABORTED}
_CONTINUE, _clock = Action.CONTINUE, time.perf_counter_ns  # bound once: the per-output path reads them

# The monitor of the request the current task is generating (set by `with_monitor`, read by the engine wrapper).
_CURRENT_REQUEST: contextvars.ContextVar[MonitoredRequest | None] = contextvars.ContextVar(
    "duet_monitored_request", default=None
)


def engine_ending(finish_reason: str | None) -> Outcome:
    """How the engine ended a request, from vLLM's finish reason (``stop``/``length``/``abort``)."""
    return _ENGINE_FINISH.get(finish_reason or "", Outcome.NATURAL_EOS)


def sampled_logprobs(logprobs: Any, token_ids: list[int]) -> list[dict[int, Any]]:
    """The sampled token's entry of each of the first ``len(token_ids)`` positions (what a server reads back: the
    rollout's own log-probs), from per-position dicts or vLLM's ``FlatLogprobs``, without the alternatives."""
    if not hasattr(logprobs, "start_indices"):
        return [{t: position[t]} for position, t in zip(logprobs, token_ids, strict=False)]
    if not token_ids:
        return []
    entry = type(next(iter(logprobs[0].values())))  # vLLM's Logprob
    starts, values, ranks, texts = logprobs.start_indices, logprobs.logprobs, logprobs.ranks, logprobs.decoded_tokens
    return [
        {t: entry(logprob=values[at], rank=ranks[at], decoded_token=texts[at])}
        for t, at in zip(token_ids, starts, strict=False)
    ]


def top_logprobs_of(position: dict[int, Any], k: int) -> list[float]:
    """The ``k`` largest log-probs of one position's ``{token_id: Logprob}`` dict, descending."""
    values = sorted((lp.logprob for lp in position.values()), reverse=True)
    return values[:k]


class MonitoredRequest:
    """The monitor of one request plus what the server must report back."""

    __slots__ = (  # read on every engine output
        "eos_token_id",
        "top_k",
        "needs_text",
        "max_tokens",
        "monitor",
        "seen",
        "decision",
        "decided_at",
        "synthetic_eos",
        "abort_failed",
        "monitor_ns",
        "decoder",
        "has_signal",
        "resume_at",
        "offset",
        "segments",
        "_head_ids",
        "_head_logprobs",
        "_head_output",
        "_quiet",
        "_text_end",
        "_top_source",
        "_top_of",
    )

    def __init__(self, rule: RolloutStopRule):
        self.eos_token_id = rule.eos_token_id
        self.top_k = rule.top_logprobs
        self.needs_text = rule.monitor.stop_abort  # answer markers are searched in the text (a probe reads none)
        self.max_tokens: int | None = None  # the engine's cap for this request, set by the engine wrapper
        self.monitor = StopAbortMonitor(rule.monitor)
        self.seen = 0  # tokens already fed
        self.decision: Action = Action.CONTINUE
        self.decided_at: int | None = None  # number of tokens kept when the monitor decided
        self.synthetic_eos = False
        self.abort_failed = False
        self.monitor_ns = 0
        self.decoder: ByteSpanDecoder | SpanDecoder | None = None  # set by the engine wrapper when it decodes itself
        self.has_signal = True  # the current segment carries the top-k log-probs (False: a lean first segment)
        self.resume_at: int | None = None  # tokens kept when a lean segment reached what needs log-probs
        self.offset = 0  # tokens of the first segment before the continuation's first token
        self.segments = 1
        self._head_ids: list[int] = []  # the first segment's kept tokens and their sampled log-prob entries
        self._head_logprobs: list[dict[int, Any]] | None = None
        self._head_output: Any = None
        self._quiet = self.monitor.quiet_until  # token count up to which the monitor reads nothing (kept updated)
        self._text_end = 0  # tokens whose text was handed to the monitor
        self._top_source: Any = None  # the log-prob container _top_of reads (one per engine request)
        self._top_of: Callable[[int], Any] | None = None

    def update(self, completion: Any) -> Action:
        """Feed the tokens of ``completion`` (cumulative) not seen yet; returns the first non-continue action.

        Tokens the monitor does not read (:attr:`StopAbortMonitor.quiet_until`: before a marker check, after it went
        idle) are skipped, and text is decoded only for the tokens checked for markers, one span at a time."""
        if self.decision is not _CONTINUE:
            return self.decision
        start = _clock()
        count = self.offset + len(completion.token_ids)
        if count <= self._quiet:  # nothing to read in this output (the monitor catches up later): kept cheap
            self.seen = count
            self.monitor_ns += _clock() - start
            return _CONTINUE
        monitor, logprobs = self.monitor, completion.logprobs
        self._sync()
        top_of = None
        if self.has_signal:
            if logprobs is None:
                raise RuntimeError("DUET's stop rule needs per-token log-probs from the engine, which returned none")
            if logprobs is not self._top_source:  # a segment's first output (vLLM then grows that container)
                self._top_source, self._top_of = logprobs, self._top_reader(logprobs)
            top_of = self._top_of
        action = monitor.advance(count, lambda end: self._text(completion, end), top_of)
        self.seen = monitor.tokens_seen
        if action is not _CONTINUE:
            self.decision, self.decided_at = action, self.seen
        elif self.seen < count:  # a lean segment reached what it cannot read: continue it from here
            self.resume_at = self.seen
        self._quiet = monitor.quiet_until
        self.monitor_ns += _clock() - start
        return action

    def _top_reader(self, logprobs: Any) -> Callable[[int], Any]:
        """Token ``i``'s top-k log-probs (``i`` counts from the first segment's first token) from this segment's
        log-probs: vLLM's flat lists (``[sampled, rank 1, …, rank k]`` per position) or per-position dicts."""
        offset, top_k = self.offset, self.top_k
        if not hasattr(logprobs, "start_indices"):
            return lambda i: top_logprobs_of(logprobs[i - offset], top_k)

        def top_of(i: int) -> Any:
            at = logprobs.start_indices[i - offset] + 1
            return logprobs.logprobs[at : at + top_k]

        return top_of

    def _sync(self) -> int:
        """Advance the monitor over the tokens the cheap path passed without it; returns the tokens seen."""
        lag = self.seen - self.monitor.tokens_seen
        if lag > 0:
            self.monitor.skip(lag)
        return self.seen

    def _text(self, completion: Any, end: int) -> str:
        """The text the tokens from the last text handed over up to ``end`` add: decoded by the monitor's own
        decoder (:mod:`~duet_verl.adapters.token_text`), else joined from the engine's per-token ``decoded_token``."""
        begin, self._text_end = self._text_end, end
        if self.decoder is not None:
            return self.decoder.text(completion.token_ids, end)
        if not self.needs_text:
            return ""
        token_ids, logprobs = completion.token_ids, completion.logprobs
        if hasattr(logprobs, "start_indices"):
            pieces = [logprobs.decoded_tokens[logprobs.start_indices[j]] for j in range(begin, end)]
        else:
            pieces = [logprobs[j][token_ids[j]].decoded_token for j in range(begin, end)]
        if any(piece is None for piece in pieces):
            raise RuntimeError(
                "DUET's stop rule needs decoded tokens to find answer markers, but the engine returned "
                "decoded_token=None (detokenization is off for this request)"
            )
        return "".join(pieces)

    def continue_from(self, output: Any) -> list[int]:
        """Keep the lean segment ``output`` up to :attr:`resume_at` as the head of the response; the continuation
        reads top-k log-probs. Returns the kept token ids (the continuation's prompt extends the prompt by them)."""
        completion, keep = output.outputs[0], self.resume_at
        self._head_ids = list(completion.token_ids[:keep])
        if completion.logprobs is not None:  # the caller asked for log-probs: keep the sampled tokens' entries
            self._head_logprobs = sampled_logprobs(completion.logprobs, self._head_ids)
        self._head_output = output
        self.offset, self.resume_at, self.has_signal, self._top_source = keep, None, True, None
        self.segments += 1
        return self._head_ids

    def whole(self, output: Any) -> Any:
        """``output`` of the current segment as one request's output: behind the head when continued (a copy)."""
        if not self.offset:
            return output
        completion = copy.copy(output.outputs[0])
        tail = list(completion.token_ids)
        if self._head_logprobs is None:
            completion.logprobs = None  # the caller asked for none; the continuation's were the monitor's
        else:
            completion.logprobs = self._head_logprobs + sampled_logprobs(completion.logprobs, tail)
        completion.token_ids = self._head_ids + tail
        final = copy.copy(output)
        final.outputs = [completion, *output.outputs[1:]]
        for name in ("prompt_token_ids", "num_cached_tokens", "prompt", "request_id"):
            if hasattr(self._head_output, name):
                setattr(final, name, getattr(self._head_output, name))
        head_preempted = getattr(self._head_output.outputs[0], "num_preempted", None)
        if head_preempted and getattr(completion, "num_preempted", None) is not None:
            completion.num_preempted += head_preempted
        return final

    def finish(self, completion: Any) -> None:
        """Record how the engine ended a request the monitor let run (EOS, length cap or the engine's abort)."""
        if self.decision is Action.CONTINUE:
            self._sync()
            self.monitor.finish(engine_ending(completion.finish_reason), length=len(completion.token_ids))

    def engine_kept_running(self, completion: Any) -> None:
        """Closing the stream failed: the request ran to ``completion``, uncut. Record that honestly."""
        self.abort_failed = True
        self._sync()
        self.monitor.finish(engine_ending(completion.finish_reason), length=len(completion.token_ids))

    def cut(self, output: Any) -> Any:
        """A copy of the cumulative ``output`` truncated at the decision, finished, with EOS appended on a stop."""
        final = copy.copy(output)
        completion = copy.copy(output.outputs[0])
        keep = self.decided_at or len(completion.token_ids)
        token_ids = list(completion.token_ids[:keep])
        logprobs = sampled_logprobs(completion.logprobs, token_ids) if completion.logprobs is not None else None
        room = self.max_tokens is None or keep < self.max_tokens
        if self.decision is Action.STOP:
            if room and (not token_ids or token_ids[-1] != self.eos_token_id):
                token_ids.append(self.eos_token_id)
                self.synthetic_eos = True
                if logprobs is not None:
                    sample = next(iter(logprobs[-1].values())) if logprobs else None
                    placeholder = copy.copy(sample) if sample is not None else None
                    if placeholder is not None:
                        placeholder.logprob, placeholder.rank, placeholder.decoded_token = 0.0, None, ""
                    logprobs.append({self.eos_token_id: placeholder})
            completion.finish_reason = "stop"
        else:
            completion.finish_reason = ABORT_FINISH_REASON
        completion.token_ids = token_ids
        completion.logprobs = logprobs
        if hasattr(completion, "text"):
            completion.text = ""  # the text of a cut request is not maintained; verl uses token ids
        final.outputs = [completion, *output.outputs[1:]]
        final.finished = True
        return final

    def compact(self, output: Any) -> Any:
        """A copy of the finished ``output`` whose log-probs keep only the sampled tokens (the alternatives were the
        monitor's; dropping them spares the server building an object per alternative)."""
        completion = copy.copy(output.outputs[0])
        if completion.logprobs is not None:
            completion.logprobs = sampled_logprobs(completion.logprobs, list(completion.token_ids))
        final = copy.copy(output)
        final.outputs = [completion, *output.outputs[1:]]
        return final

    def report(self) -> RolloutReport:
        """What the server returns in ``TokenOutput.extra_fields["duet"]`` (as a dict)."""
        record = self.monitor.record
        self._sync()
        if record.ended_at is None:
            record.length = self.monitor.tokens_seen
        return RolloutReport.from_record(
            record,
            synthetic_eos=self.synthetic_eos,
            abort_failed=self.abort_failed,
            monitor_ns=self.monitor_ns,
            segments=self.segments,
        )


async def monitored_stream(
    stream: AsyncIterator[Any],
    request: MonitoredRequest,
    resume: Callable[[list[int]], AsyncIterator[Any]] | None = None,
) -> AsyncIterator[Any]:
    """Yield the engine's outputs, ending early (and closing the engine stream) when the monitor decides. A lean
    request whose rule starts reading log-probs is continued through ``resume(head_token_ids)`` (a new engine stream
    from the head on); a continuation yields only its finished output, stitched behind the head."""
    while True:
        last = None
        async for output in stream:
            last = output
            action = request.update(output.outputs[0])
            if request.resume_at is not None and output.finished and output.outputs[0].finish_reason == "abort":
                request.resume_at = None  # the engine ended the request (verl pausing generation): not continued
            if action is Action.CONTINUE and request.resume_at is None:
                if output.finished:
                    output = request.whole(output)
                    request.finish(output.outputs[0])
                    yield request.compact(output)
                elif not request.offset:
                    yield output
                continue
            break
        else:
            if request.offset and last is not None and not last.finished:  # a continuation ended unfinished
                final = request.whole(last)
                final.finished = True
                request.finish(final.outputs[0])
                yield request.compact(final)
            return
        if not await _close(stream):  # the request runs on to its natural end, with nothing more decided
            final = request.whole(await _drain(stream, last))
            request.engine_kept_running(final.outputs[0])
            yield final
            return
        if request.resume_at is None:
            yield request.cut(request.whole(last))
            return
        if resume is None:
            raise RuntimeError("a lean request reached its marker but the engine wrapper gave no way to continue it")
        stream = resume(request.continue_from(last))


async def _close(stream: AsyncIterator[Any]) -> bool:
    """Close an engine stream (which aborts its request inside the engine); False if that failed."""
    try:
        await stream.aclose()
    except Exception:  # the rollout then simply runs to its natural end
        logger.warning("DUET: closing the engine stream failed; the rollout finishes normally", exc_info=True)
        return False
    return True


async def _drain(stream: AsyncIterator[Any], last: Any) -> Any:
    """The finished output of a stream that could not be closed (its request ran to its end)."""
    try:
        async for output in stream:
            last = output
    except Exception:
        logger.warning("DUET: the engine stream ended with an error after a failed abort", exc_info=True)
    final = copy.copy(last)
    final.finished = True
    return final


def split_duet_rule(sampling_params: dict[str, Any]) -> tuple[dict[str, Any], MonitoredRequest | None]:
    """Remove DUET's rule from ``sampling_params`` (a copy is returned) and build its monitor, if any."""
    extra = dict(sampling_params.get("extra_args") or {})
    rule = extra.pop(WIRE_KEY, None)
    if rule is None:
        return sampling_params, None
    params = {**sampling_params, "extra_args": extra}
    if not extra:
        params.pop("extra_args")
    return params, MonitoredRequest(RolloutStopRule.from_dict(rule))


def _prompt_ids(prompt: Any) -> list[int] | None:
    if isinstance(prompt, dict):
        return prompt.get("prompt_token_ids")
    return list(prompt) if isinstance(prompt, list | tuple) else None


# vLLM ``SamplingParams`` fields that make a split request differ from one request when set (not ``None``): a seeded
# generator would restart; a grammar, a thinking budget or a repetition detector would restart on the continuation's
# output; prompt log-probs would cover the head too
UNSPLIT_IF_SET = ("seed", "structured_outputs", "thinking_token_budget", "repetition_detection", "prompt_logprobs")
# ... and when non-empty or non-zero: stop strings need vLLM's detokenizer; bad words and the presence and frequency
# penalties count output tokens only (the repetition penalty counts the prompt too, so it stays equivalent); other
# ``extra_args`` (e.g. verl's ``kv_transfer_params``) may steer the engine per request
UNSPLIT_IF_NONZERO = ("stop", "bad_words", "presence_penalty", "frequency_penalty", "extra_args")


def _lean_capable(prompt: Any, params: Any, request: MonitoredRequest) -> bool:
    """Whether a request can run without log-probs until its rule reads them and then be continued exactly: the
    monitor decodes the text itself, no probe reads log-probs from the start, the prompt is plain token ids, and no
    sampling setting restarts or changes when the request is split (:data:`UNSPLIT_IF_SET`,
    :data:`UNSPLIT_IF_NONZERO`, ``n > 1``, outputs that are not cumulative)."""
    monitor = request.monitor
    return (
        request.decoder is not None
        and not monitor.reads_signal
        and monitor.config.probe is None
        and isinstance(prompt, dict)
        and prompt.get("prompt_token_ids") is not None
        and not prompt.get("multi_modal_data")
        and all(getattr(params, name, None) is None for name in UNSPLIT_IF_SET)
        and not any(getattr(params, name, None) for name in UNSPLIT_IF_NONZERO)
        and getattr(params, "n", 1) == 1
        and getattr(getattr(params, "output_kind", None), "name", "CUMULATIVE") == "CUMULATIVE"
    )


def _continuation(params: Any, request: MonitoredRequest, head: int) -> Any:
    """The sampling params of the tokens after a lean segment's ``head`` tokens: the rule's top-k log-probs."""
    params = params.clone()
    params.logprobs = max(request.top_k, params.logprobs or 0)
    if getattr(params, "max_tokens", None) is not None:
        params.max_tokens -= head
    if getattr(params, "min_tokens", 0):
        params.min_tokens = max(0, params.min_tokens - head)
    return params


def monitored_generate(engine_generate: Callable[..., AsyncIterator[Any]], tokenizer: Any = None, lean: bool = True):
    """Wrap an engine's ``generate(prompt, params, request_id, ...)``: a request made while a monitor is current
    (:func:`with_monitor`) streams through the monitor on a copy of its params (``params.clone()``) with flat
    log-probs. With ``tokenizer`` (and no stop strings, which need vLLM's detokenizer) the monitor decodes the sampled
    tokens itself, vLLM detokenizes nothing, and the request runs lean where it can (module docstring); otherwise it
    asks for the rule's top-k log-probs from the start (always, with ``lean=False``). Other requests pass straight
    through."""
    texts = TokenTexts(tokenizer)

    async def generate(prompt, sampling_params, request_id, *args, **kwargs):
        request = _CURRENT_REQUEST.get()
        if request is None:
            async for output in engine_generate(prompt, sampling_params, request_id, *args, **kwargs):
                yield output
            return
        params = sampling_params.clone()
        plain = getattr(params, "stop", None) or not request.needs_text  # vLLM decodes / nobody needs text
        decoder = None if plain else texts.decoder(_prompt_ids(prompt))
        request.decoder = decoder
        if hasattr(params, "detokenize"):
            params.detokenize = bool(getattr(params, "stop", None)) or (decoder is None and request.needs_text)
        if hasattr(params, "flat_logprobs"):
            params.flat_logprobs = True  # vLLM keeps the log-probs in flat lists, not an object per alternative
        request.max_tokens = getattr(params, "max_tokens", None)
        runs_lean = lean and _lean_capable(prompt, params, request)
        request.has_signal = not runs_lean
        if not runs_lean:
            params.logprobs = max(request.top_k, params.logprobs or 0)

        def resume(head: list[int]) -> AsyncIterator[Any]:
            continued = {**prompt, "prompt_token_ids": [*prompt["prompt_token_ids"], *head]}
            more = _continuation(params, request, len(head))
            return engine_generate(continued, more, f"{request_id}-duet", *args, **kwargs)

        stream = engine_generate(prompt, params, request_id, *args, **kwargs)
        async for output in monitored_stream(stream, request, resume if runs_lean else None):
            yield output

    return generate


async def with_monitor(request: MonitoredRequest | None, produce: Awaitable[Any]) -> Any:
    """Await a server's ``produce`` (its plain ``generate`` coroutine, not started yet) with ``request``
    current for the engine wrapper, then attach the monitor's report to ``extra_fields["duet"]``."""
    if request is None:
        return await produce
    token = _CURRENT_REQUEST.set(request)
    try:
        output = await produce
    finally:
        _CURRENT_REQUEST.reset(token)
    output.extra_fields[WIRE_KEY] = request.report().to_dict()
    return output
