"""The text of a rollout's sampled tokens, decoded by DUET's engine wrapper itself (vLLM then detokenizes nothing).

The stop/abort monitor reads text only at its marker checks, one span of tokens at a time. :class:`TokenTexts` picks,
once per tokenizer, how a request's spans are decoded:

* **byte-level BPE** (GPT-2's scheme, used by Qwen and Llama 3; the tokenizer's decoder is ``ByteLevel``): every token
  stands for fixed bytes, so a span's text is its tokens' bytes joined and fed to an incremental UTF-8 decoder, which
  keeps an incomplete character's first bytes until the rest arrive (:class:`ByteSpanDecoder`; no call into the
  tokenizer). The byte table is built once and checked against the tokenizer's own decoding of every token and of
  random token sequences; on any difference the general path below is used instead.
* any other Hugging Face fast tokenizer: two decodes by its Rust backend per span (:class:`SpanDecoder`).
* no fast backend: ``None``, and vLLM detokenizes.

Special tokens decode to nothing, as in vLLM's detokenizer (``skip_special_tokens``).
"""

from __future__ import annotations

import codecs
import logging
import random
from typing import Any

__all__ = ["ByteSpanDecoder", "SpanDecoder", "TokenTexts", "byte_level_table"]

logger = logging.getLogger(__name__)


class ByteSpanDecoder:
    """The text a span of a byte-level tokenizer's tokens adds: their bytes, decoded incrementally (an incomplete
    character at the end of a span comes with the next one; bytes that can never form one become U+FFFD)."""

    __slots__ = ("_table", "_utf8", "_end")

    def __init__(self, table: list[bytes]):
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._end = 0  # response tokens handed to the UTF-8 decoder

    def text(self, token_ids: Any, end: int) -> str:
        """The text of response tokens from the end of the last span handed out up to ``end``."""
        begin, self._end = self._end, end
        table = self._table
        try:
            data = b"".join([table[t] for t in token_ids[begin:end]])
        except IndexError:  # an id past the tokenizer's vocabulary (a padded embedding) decodes to nothing
            data = b"".join([table[t] for t in token_ids[begin:end] if t < len(table)])
        return self._utf8.decode(data)


def _byte_of_char() -> dict[str, int]:
    """GPT-2's reversible byte-to-character map, inverted: printable Latin-1 characters stand for their own byte, the
    other bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    shifted = 256
    for b in range(256):
        if b not in chars:
            chars[b], shifted = chr(shifted), shifted + 1
    return {c: b for b, c in chars.items()}


def byte_level_table(backend: Any, samples: int = 64, length: int = 48) -> list[bytes] | None:
    """The bytes each token id of a byte-level tokenizer's ``backend`` (a ``tokenizers.Tokenizer``) stands for, with
    special tokens empty; ``None`` when the tokenizer is not byte-level or its own decoding of any token, or of
    ``samples`` random sequences of ``length`` tokens, differs from the table's."""
    from tokenizers import decoders

    if not isinstance(getattr(backend, "decoder", None), decoders.ByteLevel):
        return None
    vocab = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()
    byte_of = _byte_of_char()
    table = [b""] * (max(vocab.values()) + 1)
    for token, index in vocab.items():
        if index in added:
            table[index] = b"" if added[index].special else added[index].content.encode()
        elif all(c in byte_of for c in token):
            table[index] = bytes(byte_of[c] for c in token)
        else:
            table[index] = token.encode()
    singles = backend.decode_batch([[i] for i in range(len(table))], skip_special_tokens=True)
    same = all(data.decode("utf-8", "replace") == text for data, text in zip(table, singles, strict=True))
    rng = random.Random(0)
    sequences = [[rng.randrange(len(table)) for _ in range(length)] for _ in range(samples)]
    for sequence, text in zip(sequences, backend.decode_batch(sequences, skip_special_tokens=True), strict=True):
        if not same:
            break
        decoder, cut = ByteSpanDecoder(table), rng.randrange(length + 1)  # two spans, then what a flush would add
        same = decoder.text(sequence, cut) + decoder.text(sequence, length) + decoder._utf8.decode(b"", True) == text
    if not same:
        logger.info("DUET: the tokenizer's byte table differs from its own decoding; decoding span by span instead")
        return None
    return table


class TokenTexts:
    """How the requests of one server decode their spans (module docstring); the byte table is built on first use."""

    def __init__(self, tokenizer: Any):
        self._backend = getattr(tokenizer, "_tokenizer", None)
        self._table: list[bytes] | None = None
        self._checked = False

    def decoder(self, prompt_ids: list[int] | None) -> ByteSpanDecoder | SpanDecoder | None:
        """A new request's decoder (``None`` without a fast backend: vLLM then decodes)."""
        if self._backend is None:
            return None
        if not self._checked:
            self._table, self._checked = byte_level_table(self._backend), True
        return SpanDecoder(self._backend, prompt_ids) if self._table is None else ByteSpanDecoder(self._table)


class SpanDecoder:
    """The text a span of sampled tokens adds, from a Hugging Face fast tokenizer's Rust backend, one decode call per
    span (special tokens skipped, as vLLM does). Each span is decoded after the previous one and its text is the
    difference of the two, as vLLM's incremental detokenizer does, so tokenizers that drop a leading space decode as
    in one piece; a span whose text ends in an incomplete character gives ``""`` and the character comes with the
    next span (the span's other tokens are handed out). The prompt's last tokens are the first span's context."""

    CONTEXT = 8  # prompt tokens kept as the first span's left context
    HOLD = 4  # at most this many trailing tokens are held back for an incomplete character

    def __init__(self, backend: Any, prompt_ids: list[int] | None):
        self._backend = backend
        self._ids = list(prompt_ids or [])[-self.CONTEXT :]  # context, then the response tokens not yet dropped
        self._response_at = len(self._ids)  # index of response token 0 in _ids (negative once dropped)
        self._prefix, self._read = 0, len(self._ids)  # the last span handed out is _ids[_prefix:_read]

    def text(self, token_ids: Any, end: int) -> str:
        """The text of response tokens from the end of the last span handed out up to ``end``."""
        have = len(self._ids) - self._response_at
        self._ids.extend(token_ids[have:end])
        decode = self._backend.decode
        before = decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        stop = len(self._ids)
        after = decode(self._ids[self._prefix : stop], skip_special_tokens=True)
        # an incomplete character at the end: hand out the text before it, keep its tokens for the next span (a
        # replacement character the model really wrote is handed out once HOLD tokens did not complete it)
        while after.endswith("\ufffd") and stop > max(self._read + 1, len(self._ids) - self.HOLD):
            stop -= 1
            after = decode(self._ids[self._prefix : stop], skip_special_tokens=True)
        if len(after) <= len(before) or (after.endswith("\ufffd") and stop > len(self._ids) - self.HOLD):
            return ""
        self._prefix, self._read = self._read, stop
        del self._ids[: self._prefix]  # only the last span is context from now on
        self._response_at -= self._prefix
        self._read -= self._prefix
        self._prefix = 0
        return after[len(before) :]
