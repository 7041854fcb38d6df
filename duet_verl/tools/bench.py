"""``duet-verl bench``: micro-benchmarks of the allocator and the stop/abort monitor.

Prints one progress line per measurement and, as the last line, one JSON object of medians:
``alloc_us_m{128,1024,8192}`` (µs per allocation), ``monitor_ns_per_token`` (our monitor on a
3,000-token math-like stream), ``reference_monitor_ns_per_token`` (the same stream through a
straightforward monitor in the style of the DUET reference: decode the last 256 tokens with the
tokenizer and run the marker regexes every 8 tokens, per-token signal from the logits with torch) and
``monitor_speedup`` (their ratio). With ``--vllm``, the keys of :mod:`duet_verl.tools.bench_vllm` follow.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time

import numpy as np
import torch

from duet_verl.core.allocator import allocate_rollouts, token_budget
from duet_verl.core.monitor import Action, StopAbortMonitor, StopRuleConfig
from duet_verl.tools.bench_vllm import VllmBenchConfig, run_vllm_bench

STREAM_TOKENS = 3000
CAP = 3072

_WORDS = (
    "Let",
    " us",
    " compute",
    " the",
    " sum",
    " of",
    " x",
    " and",
    " y",
    ".",
    " We",
    " have",
    " $",
    "x",
    "^",
    "2",
    " +",
    " 3",
    "y",
    " =",
    " 12",
    "$",
    ",",
    " so",
    " \\frac",
    "{",
    "1",
    "}",
    "{",
    "2",
    "}",
    " \\cdot",
    " (",
    ")",
    " therefore",
    " which",
    " gives",
    "\n",
    " Next",
    " check",
    " 7",
    " is",
    " prime",
    " hence",
)
_ANSWER = (
    " Thus",
    " the",
    " answer",
    " is",
    " $",
    "\\boxed",
    "{",
    "\\frac",
    "{",
    "7",
    "}",
    "{",
    "2",
    "}",
    "}",
    "$",
    ".",
)


def build_bench_tokenizer(seed: int = 0):
    """A byte-level BPE tokenizer trained here on math-like text (no download), like real LLM tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    rng = np.random.default_rng(seed)
    corpus = ["".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), 400)) + "".join(_ANSWER) for _ in range(20)]
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return tokenizer


def math_like_stream(tokenizer, seed: int = 0, tokens: int = STREAM_TOKENS, answer_at: int = 1800):
    """Token ids, their text pieces, top-2 log-probs and full logits rows: reasoning, a ``\\boxed{}``
    answer near token ``answer_at``, then more talk. Confidence stays below the 0.99 threshold, so both
    monitors walk the whole stream."""
    rng = np.random.default_rng(seed)

    def words(n: int) -> str:
        return "".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), n))

    head = tokenizer.encode(words(answer_at)).ids[:answer_at]
    ids = head + tokenizer.encode("".join(_ANSWER)).ids + tokenizer.encode(words(2 * tokens)).ids
    ids = ids[:tokens]
    texts = [tokenizer.decode([i]) for i in ids]  # what a server streams as per-token text deltas
    vocab = tokenizer.get_vocab_size()
    logits = rng.normal(size=(tokens, vocab)).astype(np.float32)
    logits[np.arange(tokens), ids] += rng.uniform(2.0, 8.5, tokens).astype(np.float32)  # a peaked distribution
    logprobs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    top2 = np.sort(logprobs, axis=1)[:, ::-1][:, :2].astype(np.float64).tolist()  # what the engine returns
    return ids, texts, top2, logits


def _stream_config() -> StopRuleConfig:
    return StopRuleConfig(k1=int(0.3 * CAP), k2=int(0.7 * CAP), threshold=0.99, seed=0)


def run_monitor(texts, top2) -> int | None:
    """Our monitor over the stream; returns the token at which the marker was noticed."""
    mon = StopAbortMonitor(_stream_config())
    on_token = mon.on_token
    for text, lps in zip(texts, top2, strict=True):
        if on_token(text, lps) is not Action.CONTINUE:
            break
    return mon.record.marker_at


class ReferenceStyleMonitor:
    """The straightforward design of the DUET reference's logits processor: called for every token with the
    next-token logits; from K1, every 8 tokens it re-decodes the last 256 tokens with the tokenizer and runs
    all marker regexes over that tail; once a marker is seen, a per-token signal from softmax/top-k of the
    logits (torch, as a logits processor computes it)."""

    _PATTERNS = [
        re.compile(r"\\boxed\s*\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"),
        re.compile(r"\\boxed\s*\[([^\]]*)\]"),
        re.compile(r"##\s*Final Answer"),
        re.compile(r"Final answer:\s*(\S+)"),
        re.compile(r"<answer>(.*?)</answer>", re.DOTALL),
        re.compile(r"<final_answer>(.*?)</final_answer>", re.DOTALL),
        re.compile(r"Therefore, the answer is\s*(\S+)"),
    ]

    def __init__(self, config: StopRuleConfig, tokenizer):
        self.cfg, self.tokenizer = config, tokenizer
        self.ids: list[int] = []
        self.marker_at: int | None = None
        self.streak = 0

    def on_token(self, token_id: int, logits) -> bool:
        self.ids.append(token_id)
        t = len(self.ids)
        if t < max(self.cfg.min_tokens, self.cfg.k1):
            return False
        if self.marker_at is None:
            if t % self.cfg.check_every == 0:
                tail = self.tokenizer.decode(self.ids[-256:])
                if any(p.search(tail) for p in self._PATTERNS):
                    self.marker_at = t
            return False
        top = torch.topk(torch.softmax(logits.to(torch.float32), dim=-1), 2).values
        signal = (top[0] - top[1]).item()
        self.streak = self.streak + 1 if signal > self.cfg.threshold else 0
        return self.streak >= self.cfg.hysteresis


def run_reference(tokenizer, ids, logits) -> int | None:
    """The reference-style monitor over the same stream."""
    mon = ReferenceStyleMonitor(_stream_config(), tokenizer)
    for tid, row in zip(ids, logits, strict=True):
        if mon.on_token(tid, row):
            break
    return mon.marker_at


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_bench(repeats: int = 30, out=sys.stdout) -> dict[str, float]:
    """Run all measurements; prints progress to ``out`` and returns the result dict."""
    rng = np.random.default_rng(0)
    result: dict[str, float] = {}
    for m in (128, 1024, 8192):
        scores = rng.gamma(2.0, 1.0, m)
        lengths = rng.uniform(100, CAP, m)
        budget = token_budget(lengths, 8, 0.5)
        alloc = allocate_rollouts(scores, lengths, budget)
        result[f"alloc_us_m{m}"] = (
            _median_time(lambda s=scores, L=lengths, b=budget: allocate_rollouts(s, L, b), repeats) * 1e6
        )
        result[f"alloc_budget_error_m{m}"] = alloc.budget_error
        print(
            f"[bench] allocation M={m}: {result[f'alloc_us_m{m}']:.0f} us, unused budget "
            f"{alloc.budget_error:.2e}, {alloc.bisection_steps} spend evaluations",
            file=out,
            flush=True,
        )
    tokenizer = build_bench_tokenizer()
    ids, texts, top2, logits = math_like_stream(tokenizer)
    logits = torch.from_numpy(logits)
    ours, theirs = run_monitor(texts, top2), run_reference(tokenizer, ids, logits)
    if ours is None or theirs is None or abs(ours - theirs) > 16:
        raise RuntimeError(f"monitors disagree on the marker position: ours={ours}, reference={theirs}")
    result["monitor_ns_per_token"] = _median_time(lambda: run_monitor(texts, top2), repeats) / len(texts) * 1e9
    print(
        f"[bench] monitor: {result['monitor_ns_per_token']:.0f} ns/token (marker noticed at token {ours})",
        file=out,
        flush=True,
    )
    result["reference_monitor_ns_per_token"] = (
        _median_time(lambda: run_reference(tokenizer, ids, logits), max(5, repeats // 3)) / len(texts) * 1e9
    )
    print(
        f"[bench] reference-style monitor: {result['reference_monitor_ns_per_token']:.0f} ns/token "
        f"(marker noticed at token {theirs})",
        file=out,
        flush=True,
    )
    result["monitor_speedup"] = result["reference_monitor_ns_per_token"] / result["monitor_ns_per_token"]
    return {k: round(v, 6 if "error" in k else 2) for k, v in result.items()}


def main(repeats: int = 30, vllm: VllmBenchConfig | None = None) -> int:
    """CLI entry: progress lines, then the JSON object as the last line (with ``vllm``, the engine's keys too)."""
    result = run_bench(repeats)
    if vllm is not None:
        result |= run_vllm_bench(vllm)
    print(json.dumps(result, sort_keys=True))
    return 0
