"""``duet-verl bench --vllm``: DUET's rollouts against plain rollouts in the real vLLM engine, on this machine's device.

The same requests (``--requests`` prompts × ``--max-tokens`` tokens, end-of-turn ignored so every request runs to its
cap unless DUET ends it) go through DUET's engine wrapper on one ``AsyncLLM`` (the path of DUET's vLLM server) in
five variants, interleaved round by round so drift hits all of them alike:

* ``plain``: no log-probs, no monitor (what GRPO's rollouts cost);
* ``logprobs2``: top-2 detokenized log-probs, no monitor (what a log-prob reader without DUET's settings costs);
* ``logprobs2_flat``: top-2 log-probs exactly as DUET's wrapper asks for them (flat lists, no detokenization), no
  monitor: vLLM's own cost of DUET's signal, so ``duet`` ÷ ``logprobs2_flat`` is what the monitored path adds (the
  monitor's own time, ``server_monitor_ns_per_token``, and the wrapper's stream handling around it);
* ``duet``: DUET's rule checking for a marker every 8 tokens and never firing (every request runs to its cap, lean:
  without the top-k log-probs, which the rule reads only after a marker);
* ``duet_marker``: a marker at the first check (any character counts) and a threshold never reached, so each request is
  continued from its first 8 tokens reading top-2 log-probs up to its cap (the lean design's worst case: a second
  request per rollout and log-probs on almost every token);
* ``duet_firing``: DUET's rule firing (no answer marker, so every request is aborted at ``K2 + grace``).

Throughput is generated tokens per second of wall-clock for the batch; each variant's median over ``--rounds``. The last
line is one JSON object: ``vllm_plain_tok_s``, ``vllm_duet_tok_s``, ``vllm_throughput_ratio`` (DUET ÷ plain;
``vllm_throughput_ratio_rounds`` has it per round), ``vllm_logprobs2_ratio`` (logprobs2 ÷ plain),
``vllm_logprobs2_flat_ratio``, ``vllm_firing_tok_s``, ``vllm_duet_marker_tok_s`` and ``vllm_duet_marker_ratio`` (÷
plain), ``vllm_segments`` (engine requests per rollout of each DUET variant: 1 lean, 2 continued),
``server_monitor_ns_per_token`` (DUET's own time per monitored token inside the wrapper, over ``duet`` and
``duet_firing``; ``server_monitor_ns_per_token_by_variant`` per variant: the last round's engine streams, recorded as
the wrapper received them, replayed through the wrapper while the engine is idle, median of 5 replays, which must return
the live run's rollouts), ``server_monitor_wall_ns_per_token`` (and ``_by_variant``: the same time measured live over
all rounds, wall-clock, so on a machine whose cores the engine keeps busy it includes the monitor being descheduled),
``vllm_duet_marker_lengths`` and
``vllm_firing_lengths`` (shortest and longest returned rollout; the firing ones are equal when every abort is cut at its
decision, with or without async scheduling; tokens the engine computed ahead and threw away are not counted),
``device``, ``model`` and the sizes.
``in_engine_signal_us_per_step`` and ``in_engine_signal_ns_per_token`` price the in-engine design (DUET's confidence
signal for one decode step of the batch from its logits over a Qwen3-sized vocabulary, vectorised, as a logits
processor would compute it) on the same device, for comparison with ``server_monitor_ns_per_token``.
"""

from __future__ import annotations

import asyncio
import copy
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from duet_verl.adapters.stream_monitor import monitored_generate
from duet_verl.core.markers import MarkerSpec
from duet_verl.core.monitor import StopRuleConfig
from duet_verl.core.protocol import RolloutStopRule

__all__ = ["VllmBenchConfig", "run_vllm_bench"]

VARIANTS = ("plain", "logprobs2", "logprobs2_flat", "duet", "duet_marker", "duet_firing")
QWEN3_VOCAB = 151_936  # the vocabulary a logits processor would scan on a real Qwen3 model


# Randomly initialised models built on the spot (nothing downloaded), with the project's byte-level tokenizer's
# vocabulary: ``tiny`` is the quickstart's model, ``qwen3-1.7b`` Qwen3-1.7B's transformer shape (for a GPU).
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4},
    "qwen3-1.7b": {
        "hidden_size": 2048,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 6144,
    },
}


@dataclass
class VllmBenchConfig:
    """Sizes of ``bench --vllm``; ``model`` is a local Hugging Face directory, else a random model of ``shape``."""

    model: str | None = None
    requests: int = 64
    max_tokens: int = 256
    rounds: int = 5
    prompt_tokens: int = 16
    shape: str = "tiny"
    # vLLM's async scheduling (None: vLLM's choice; on by default on a GPU, always off on the CPU). DUET cuts a stopped
    # rollout at its decision in the output stream, so the returned tokens are the same either way; with it on, the
    # engine may compute one more token per stopped request before the abort lands.
    async_scheduling: bool | None = None


def _rule(eos_token_id: int, max_tokens: int, variant: str) -> Any:
    """A monitored request of ``variant``: checking for a marker every 8 tokens over the whole rollout and never
    deciding (no marker before K2 + grace, which lies beyond the cap), seeing a marker at the first check and reading
    log-probs from there on without ever being confident enough to stop, or aborting marker-less rollouts at
    K2 + grace."""
    from duet_verl.adapters.stream_monitor import MonitoredRequest

    firing = variant == "duet_firing"
    k2 = max_tokens // 2 if firing else max_tokens
    any_text = MarkerSpec(domains=(), regexes=(r"[\s\S]",))
    config = StopRuleConfig(
        k1=max_tokens // 4 if firing else 8,
        k2=k2,
        threshold=1.0,
        seed=0,
        min_tokens=8,
        grace=8 if firing else max_tokens,
        check_every=8,
        hysteresis=5,
        eps_len=0.0,
        eps_abort=1e-12,
        markers=any_text if variant == "duet_marker" else MarkerSpec(domains=("math",)),
    )
    return MonitoredRequest(RolloutStopRule(config, eos_token_id, 2))


@dataclass
class _Stream:
    """One engine stream as DUET's wrapper received it: the prompt, each output's token count and the last output."""

    prompt: dict[str, Any]
    counts: list[int] = field(default_factory=list)
    last: Any = None

    def outputs(self) -> list[Any]:
        """The stream's outputs again, each a copy of the last with the tokens it had then."""
        completion, ids = self.last.outputs[0], list(self.last.outputs[0].token_ids)
        rebuilt = []
        for k, count in enumerate(self.counts):
            final = k == len(self.counts) - 1
            part = copy.copy(completion)
            part.token_ids = ids[:count]
            part.finish_reason = completion.finish_reason if final else None
            output = copy.copy(self.last)
            output.outputs, output.finished = [part], final and self.last.finished
            rebuilt.append(output)
        return rebuilt


class _Recorder:
    """An engine's ``generate`` that records every stream (:class:`_Stream`, by request id) while passing it on, and
    replays the recorded streams as an engine that is not there."""

    def __init__(self, engine_generate):
        self._engine = engine_generate
        self.streams: dict[str, _Stream] = {}
        self.returned: list[tuple[int, ...]] = []  # the rollouts the server got back, sorted (set by the bench)

    async def generate(self, prompt, params, request_id, *args, **kwargs):
        stream = self.streams[request_id] = _Stream(prompt)
        async for output in self._engine(prompt, params, request_id, *args, **kwargs):
            stream.counts.append(len(output.outputs[0].token_ids))
            stream.last = output
            yield output

    def replaying(self):
        """An engine ``generate`` that yields each recorded stream's outputs (rebuilt before any is asked for)."""
        rebuilt = {request_id: stream.outputs() for request_id, stream in self.streams.items()}

        async def generate(prompt, params, request_id, *args, **kwargs):
            for output in rebuilt[request_id]:
                yield output

        return generate


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def _engine_args(model: str, max_model_len: int, async_scheduling: bool | None = None):
    import torch
    from vllm.engine.arg_utils import AsyncEngineArgs

    if torch.cuda.is_available():
        return AsyncEngineArgs(
            model=model,
            max_model_len=max_model_len,
            gpu_memory_utilization=0.5,
            dtype="bfloat16",
            seed=0,
            async_scheduling=async_scheduling,
        )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB
    return AsyncEngineArgs(model=model, max_model_len=max_model_len, enforce_eager=True, dtype="float32", seed=0)


def _random_model(directory: str, shape: str) -> str:
    """A randomly initialised Qwen3 of ``SHAPES[shape]`` with the byte-level tokenizer, saved to ``directory``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from duet_verl.demo.assets import build_tokenizer

    tokenizer = build_tokenizer(directory)
    sizes = SHAPES[shape]
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        intermediate_size=sizes.get("intermediate_size", 2 * sizes["hidden_size"]),
        head_dim=sizes.get("head_dim", sizes["hidden_size"] // sizes["num_attention_heads"]),
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **{k: v for k, v in sizes.items() if k not in ("intermediate_size", "head_dim")},
    )
    torch.manual_seed(0)
    gpu = torch.cuda.is_available()
    with torch.device("cuda" if gpu else "cpu"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16 if gpu else torch.float32)
    model.save_pretrained(directory)
    return directory


def run_vllm_bench(cfg: VllmBenchConfig, out=sys.stdout) -> dict[str, Any]:
    """Start the engine, run the interleaved rounds and return the result dict (progress lines to ``out``)."""
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from duet_verl.vllm_support.harness import EngineHarness

    def log(message: str) -> None:
        print(f"[bench --vllm] {message}", file=out, flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        model = cfg.model or _random_model(scratch, cfg.shape)
        tokenizer = AutoTokenizer.from_pretrained(model)
        eos = tokenizer.eos_token_id
        described = cfg.model or f"random {cfg.shape}-shaped Qwen3 ({SHAPES[cfg.shape]}), byte-level vocabulary"
        log(f"starting vLLM on {_device()} with {described}")
        started = time.perf_counter()
        harness = EngineHarness(_engine_args(model, cfg.prompt_tokens + cfg.max_tokens + 16, cfg.async_scheduling))
        async_scheduling = bool(harness.llm.vllm_config.scheduler_config.async_scheduling)
        scheduling = "on" if async_scheduling else "off"
        log(f"engine ready in {time.perf_counter() - started:.0f}s (async scheduling {scheduling})")
        try:
            measured = _measure(harness, cfg, eos, SamplingParams, log) | in_engine_signal_cost(cfg.requests)
            return measured | {"device": _device(), "model": described, "vllm_async_scheduling": async_scheduling}
        finally:
            harness.close()


def _measure(harness, cfg: VllmBenchConfig, eos: int, sampling_params, log) -> dict[str, Any]:
    plain = sampling_params(max_tokens=cfg.max_tokens, temperature=1.0, ignore_eos=True, seed=None)
    logprobs2 = plain.clone()
    logprobs2.logprobs, logprobs2.detokenize = 2, True
    logprobs2_flat = plain.clone()
    logprobs2_flat.logprobs, logprobs2_flat.detokenize, logprobs2_flat.flat_logprobs = 2, False, True
    prompts = [[5 + (i * 7 + j) % 200 for j in range(cfg.prompt_tokens)] for i in range(cfg.requests)]

    firing_lengths: list[int] = []
    marker_lengths: list[int] = []
    segments: dict[str, list[int]] = {v: [] for v in VARIANTS if v.startswith("duet")}
    recorded: dict[str, _Recorder] = {}  # each DUET variant's batch of the last round, as the wrapper received it
    tokenizer = harness.llm.tokenizer

    async def batch(variant: str, record: bool = False) -> tuple[float, int, int]:
        """(seconds, generated tokens, monitor ns) of one batch of the variant."""
        params = {"logprobs2": logprobs2, "logprobs2_flat": logprobs2_flat}.get(variant, plain)
        rules = [_rule(eos, cfg.max_tokens, variant) if variant.startswith("duet") else None for _ in prompts]
        generate = None
        if record and variant in segments:
            recorded[variant] = _Recorder(harness.llm.generate)
            generate = monitored_generate(recorded[variant].generate, tokenizer=tokenizer)
        start = time.perf_counter()
        requests = (harness.one(p, params, r, generate) for p, r in zip(prompts, rules, strict=True))
        done = await asyncio.gather(*requests)
        seconds = time.perf_counter() - start
        lengths = [len(final.outputs[0].token_ids) for final, _ in done]
        if generate is not None:
            recorded[variant].returned = sorted(tuple(final.outputs[0].token_ids) for final, _ in done)
        if variant == "duet_firing":
            firing_lengths.extend(lengths)
        if variant == "duet_marker":
            marker_lengths.extend(lengths)
        if variant in segments:
            segments[variant].extend(r.segments for r in rules)
        tokens = sum(lengths)
        return seconds, tokens, sum(r.monitor_ns for r in rules if r is not None)

    harness.run(batch("plain"))  # warm-up: first-step compilation and caches
    runs: dict[str, list[tuple[float, int, int]]] = {v: [] for v in VARIANTS}
    for round_index in range(cfg.rounds):
        for variant in VARIANTS[round_index % len(VARIANTS) :] + VARIANTS[: round_index % len(VARIANTS)]:
            runs[variant].append(harness.run(batch(variant, record=round_index == cfg.rounds - 1), timeout=1800))
        rates = {v: runs[v][-1][1] / runs[v][-1][0] for v in VARIANTS}
        log(f"round {round_index + 1}/{cfg.rounds}: " + ", ".join(f"{v} {r:,.0f} tok/s" for v, r in rates.items()))
    if harness.unfinished():
        raise RuntimeError(f"{harness.unfinished()} requests were left unfinished in the engine")
    tok_s = {v: statistics.median(t / s for s, t, _ in runs[v]) for v in VARIANTS}
    paired = (runs["duet"], runs["plain"])  # the same round's batches, run back to back
    monitored = [(ns, t) for v in ("duet", "duet_firing") for _, t, ns in runs[v]]
    replayed = {v: _replay(harness, recorder, plain, eos, cfg, tokenizer, v) for v, recorder in recorded.items()}
    log(
        "replayed the last round's DUET streams with the engine idle: "
        + ", ".join(f"{v} {ns:,.0f} ns/token" for v, (ns, _) in replayed.items())
    )
    return {
        "vllm_plain_tok_s": round(tok_s["plain"], 1),
        "vllm_logprobs2_tok_s": round(tok_s["logprobs2"], 1),
        "vllm_logprobs2_flat_tok_s": round(tok_s["logprobs2_flat"], 1),
        "vllm_duet_tok_s": round(tok_s["duet"], 1),
        "vllm_duet_marker_tok_s": round(tok_s["duet_marker"], 1),
        "vllm_firing_tok_s": round(tok_s["duet_firing"], 1),
        "vllm_throughput_ratio": round(tok_s["duet"] / tok_s["plain"], 4),
        "vllm_throughput_ratio_rounds": [round(d[1] / d[0] / (p[1] / p[0]), 3) for d, p in zip(*paired, strict=True)],
        "vllm_duet_marker_ratio": round(tok_s["duet_marker"] / tok_s["plain"], 4),
        "vllm_logprobs2_ratio": round(tok_s["logprobs2"] / tok_s["plain"], 4),
        "vllm_logprobs2_flat_ratio": round(tok_s["logprobs2_flat"] / tok_s["plain"], 4),
        "server_monitor_ns_per_token": round(
            sum(ns * t for v, (ns, t) in replayed.items() if v != "duet_marker")
            / max(sum(t for v, (_, t) in replayed.items() if v != "duet_marker"), 1),
            1,
        ),
        "server_monitor_ns_per_token_by_variant": {v: round(ns, 1) for v, (ns, _) in replayed.items()},
        "server_monitor_wall_ns_per_token": round(
            sum(ns for ns, _ in monitored) / max(sum(t for _, t in monitored), 1), 1
        ),
        "server_monitor_wall_ns_per_token_by_variant": {
            v: round(sum(ns for _, _, ns in runs[v]) / max(sum(t for _, t, _ in runs[v]), 1), 1) for v in segments
        },
        "vllm_firing_lengths": [min(firing_lengths), max(firing_lengths)],
        "vllm_duet_marker_lengths": [min(marker_lengths), max(marker_lengths)],
        "vllm_segments": {v: round(statistics.mean(n), 3) for v, n in segments.items()},
        "requests": cfg.requests,
        "max_tokens": cfg.max_tokens,
        "rounds": cfg.rounds,
    }


def _replay(harness, recorder: _Recorder, params, eos: int, cfg: VllmBenchConfig, tokenizer, variant: str, repeats=5):
    """DUET's own time per token on a recorded batch of ``variant``: its streams, as the engine produced them, fed
    again through DUET's wrapper with fresh rules while the engine is idle (the time inside the monitor's ``update``,
    without the descheduling that a machine busy with the engine adds to the live measurement). Returns (median
    ns per token over ``repeats``, tokens per replay)."""
    replay = monitored_generate(recorder.replaying(), tokenizer=tokenizer)
    top = {rid: stream for rid, stream in recorder.streams.items() if not rid.endswith("-duet")}
    rates, tokens = [], 0

    async def replay_all(rules: dict[str, Any]) -> list[Any]:
        prompts = {rid: stream.prompt["prompt_token_ids"] for rid, stream in top.items()}
        return await asyncio.gather(
            *(harness.one(prompts[rid], params, rule, replay, request_id=rid) for rid, rule in rules.items())
        )

    for _ in range(repeats):
        rules = {rid: _rule(eos, cfg.max_tokens, variant) for rid in top}
        done = harness.run(replay_all(rules))
        if sorted(tuple(final.outputs[0].token_ids) for final, _ in done) != recorder.returned:
            raise RuntimeError(f"replaying {variant}'s streams returned other rollouts than the engine run did")
        tokens = sum(len(final.outputs[0].token_ids) for final, _ in done)
        rates.append(sum(r.monitor_ns for r in rules.values()) / max(tokens, 1))
    return statistics.median(rates), tokens


def in_engine_signal_cost(batch: int, vocab: int = QWEN3_VOCAB, repeats: int = 30) -> dict[str, float]:
    """Median cost of DUET's confidence signal computed inside the engine for one decode step of ``batch`` requests:
    the margin of :func:`duet_verl.core.signals.margin` from the step's logits (the two largest by max, mask, max;
    the log-sum-exp over the vocabulary) and the hysteresis counters, vectorised on this device. A lower bound of a
    logits-processor design (it leaves out per-request bookkeeping)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(batch, vocab, device=device, generator=generator)
    counters = torch.zeros(batch, dtype=torch.int32, device=device)

    def step() -> torch.Tensor:  # max, mask, max: faster than torch.topk over a long row (measured on an H200)
        first, index = logits.max(dim=-1)
        second = logits.scatter(-1, index[:, None], float("-inf")).max(dim=-1).values
        normaliser = torch.logsumexp(logits, dim=-1)
        margin = (first - normaliser).exp() - (second - normaliser).exp()  # DUET's default signal
        return torch.where(margin > 0.5, counters + 1, torch.zeros_like(counters))

    times = []
    for i in range(repeats + 3):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - start)
    us = statistics.median(times) * 1e6
    return {"in_engine_signal_us_per_step": round(us, 1), "in_engine_signal_ns_per_token": round(us * 1e3 / batch, 1)}
