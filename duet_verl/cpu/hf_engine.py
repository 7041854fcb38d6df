"""A small streaming generation engine over a Hugging Face causal LM, for CPU runs and tests.

It streams *cumulative* outputs with the same attribute shape as vLLM's ``RequestOutput`` (``outputs[0]``
with ``token_ids``, ``logprobs`` as one ``{token_id: Logprob}`` dict per token, ``finish_reason``;
``finished``), so DUET's stop/abort monitor (:mod:`duet_verl.adapters.stream_monitor`) runs unchanged on it.

Concurrent requests are decoded together: a scheduler task runs one forward pass per step over every
active sequence (right-padded, no KV cache: recomputing is cheap for the tiny models this engine is
for), samples each row with the request's own seeded generator, and pushes one output per request.
Closing a request's stream aborts it at the next step. Log-probs are *processed* (after temperature,
top-k and top-p), like verl's default ``logprobs_mode``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

__all__ = ["CompletionOutput", "HFSamplingParams", "HFStreamingEngine", "Logprob", "RequestOutput"]


@dataclass
class Logprob:
    """One candidate token at one position."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    """The (cumulative) completion of a request."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    """One streamed update of a request."""

    request_id: str
    outputs: list[CompletionOutput]
    finished: bool = False


@dataclass
class HFSamplingParams:
    """Sampling settings of one request (names as vLLM's ``SamplingParams``)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    logprobs: int | None = None  # number of top log-probs per position (None: only the sampled one is kept)
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def clone(self) -> HFSamplingParams:
        """A copy (the monitor raises ``logprobs`` on its own copy)."""
        return replace(self, stop_token_ids=list(self.stop_token_ids))

    @classmethod
    def from_dict(cls, params: dict[str, Any], default_max_tokens: int) -> HFSamplingParams:
        """From a verl sampling-params dict (unknown keys such as ``repetition_penalty`` are ignored)."""
        logprobs = params.get("logprobs")
        if isinstance(logprobs, bool):  # verl passes rollout.calculate_log_probs: True means "the sampled one"
            logprobs = 0 if logprobs else None
        return cls(
            max_tokens=int(params.get("max_tokens", params.get("max_new_tokens", default_max_tokens))),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", -1) if params.get("top_k") is not None else -1),
            logprobs=None if logprobs is None else int(logprobs),
            seed=params.get("seed"),
            stop_token_ids=list(params.get("stop_token_ids") or []),
            ignore_eos=bool(params.get("ignore_eos", False)),
        )


@dataclass
class _Request:
    request_id: str
    ids: list[int]
    prompt_len: int
    params: HFSamplingParams
    generator: torch.Generator
    queue: asyncio.Queue
    completion: CompletionOutput
    cancelled: bool = False


class HFStreamingEngine:
    """Batched token-by-token sampling with a ``transformers`` causal LM (CPU-friendly)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, eos_token_ids: list[int] | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
        self.eos_token_ids = {int(e) for e in eos if e is not None}
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._active: dict[str, _Request] = {}
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._decoded: dict[int, str] = {}
        self.steps = 0

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Replace the model's weights (the tied embeddings are re-tied)."""
        self.model.load_state_dict(state_dict, strict=False)
        if hasattr(self.model, "tie_weights"):
            self.model.tie_weights()

    async def generate(
        self, prompt_ids: list[int], params: HFSamplingParams, request_id: str
    ) -> AsyncIterator[RequestOutput]:
        """Stream cumulative outputs until EOS, ``max_tokens``, or until the consumer closes the stream."""
        gen = torch.Generator().manual_seed(int(params.seed) if params.seed is not None else hash(request_id) % 2**31)
        logprobs = [] if params.logprobs is not None else None
        request = _Request(
            request_id,
            list(prompt_ids),
            len(prompt_ids),
            params,
            gen,
            asyncio.Queue(),
            CompletionOutput(index=0, text="", token_ids=[], logprobs=logprobs),
        )
        self._active[request_id] = request
        self._ensure_loop()
        try:
            while True:
                output: RequestOutput = await request.queue.get()
                yield output
                if output.finished:
                    return
        finally:
            request.cancelled = True
            self._active.pop(request_id, None)

    # -- scheduler ---------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop_task is None or self._loop_task.done() or self._loop_task.get_loop() is not loop:
            self._wakeup = asyncio.Event()  # events belong to one event loop
            self._loop_task = loop.create_task(self._run())
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            batch = [r for r in self._active.values() if not r.cancelled]
            if not batch:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._step(batch)
            self.steps += 1
            await asyncio.sleep(0)  # let consumers take their outputs (and close streams)

    @torch.no_grad()
    def _step(self, batch: list[_Request]) -> None:
        width = max(len(r.ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):
            input_ids[row, : len(r.ids)] = torch.tensor(r.ids)
            attention[row, : len(r.ids)] = 1
        logits = self.model(input_ids=input_ids, attention_mask=attention).logits
        last = torch.tensor([len(r.ids) - 1 for r in batch])
        next_logits = logits[torch.arange(len(batch)), last].float()
        for row, r in enumerate(batch):
            self._advance(r, next_logits[row])

    def _advance(self, r: _Request, logits: torch.Tensor) -> None:
        p = r.params
        if p.temperature <= 0:
            logp = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logp))
        else:
            logp = torch.log_softmax(_filter(logits / p.temperature, p.top_k, p.top_p), dim=-1)
            token = int(torch.multinomial(logp.exp(), 1, generator=r.generator))
        c = r.completion
        r.ids.append(token)
        c.token_ids.append(token)
        if c.logprobs is not None:
            c.logprobs.append(self._position_logprobs(logp, token, max(p.logprobs or 0, 0)))
        c.text += self._decode(token)
        done_eos = token in self.eos_token_ids and not p.ignore_eos or token in p.stop_token_ids
        done_len = len(c.token_ids) >= p.max_tokens
        if done_eos or done_len:
            c.finish_reason = "stop" if done_eos else "length"
        finished = done_eos or done_len
        if finished:
            self._active.pop(r.request_id, None)
        r.queue.put_nowait(RequestOutput(r.request_id, [copy.copy(c)], finished))

    def _position_logprobs(self, logp: torch.Tensor, token: int, k: int) -> dict[int, Logprob]:
        entries: dict[int, Logprob] = {}
        if k > 0:
            values, ids = torch.topk(logp, k)
            for rank, (v, i) in enumerate(zip(values.tolist(), ids.tolist(), strict=True), start=1):
                entries[i] = Logprob(v, rank, self._decode(i))
        if token not in entries:
            rank = int((logp > logp[token]).sum()) + 1
            entries[token] = Logprob(float(logp[token]), rank, self._decode(token))
        return entries

    def _decode(self, token: int) -> str:
        text = self._decoded.get(token)
        if text is None:
            text = self._decoded[token] = self.tokenizer.decode([token])
        return text


def _filter(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside top-k and the top-p nucleus with ``-inf``."""
    if top_k is not None and 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits
