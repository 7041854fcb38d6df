"""How DUET's engine wrapper decodes the sampled tokens itself: per-span text equal to the tokenizer's own decoding."""

import random

import pytest

from duet_verl.adapters.token_text import ByteSpanDecoder, SpanDecoder, TokenTexts, byte_level_table

TEXT = "So x = 42 — ü∑ \\boxed{42} 中文 答案是 7. 😀 "


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE with merges (multi-byte tokens, pieces of characters), a special and a plain added token."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        [TEXT, "The answer is 7. Ünïcødé ∫∑∂"] * 50, vocab_size=400, show_progress=False, special_tokens=["<|im_end|>"]
    )
    tokenizer.add_tokens(["<think>"])
    return tokenizer._tokenizer


class Wrapped:
    """A ``transformers`` fast tokenizer's shape: the Rust backend as ``_tokenizer``."""

    def __init__(self, backend):
        self._tokenizer = backend


def pieces(decoder, ids: list[int], span: int) -> list[str]:
    return [decoder.text(ids, min(end, len(ids))) for end in range(span, len(ids) + span, span)]


@pytest.mark.parametrize("span", [1, 3, 8])
@pytest.mark.parametrize("kind", ["byte_table", "span"])
def test_spans_rebuild_the_text_vllm_would_show(tiny_assets, kind, span):
    """The project's byte-level tokenizer (one token per byte: characters split over tokens): both decoders."""
    tokenizer = tiny_assets[1]
    prompt = tokenizer.encode("Q: 12+30=")
    ids = tokenizer.encode(TEXT * 3, add_special_tokens=False) + [tokenizer.eos_token_id]
    decoder = (
        TokenTexts(tokenizer).decoder(prompt) if kind == "byte_table" else SpanDecoder(tokenizer._tokenizer, prompt)
    )
    assert isinstance(decoder, ByteSpanDecoder if kind == "byte_table" else SpanDecoder)
    out = pieces(decoder, ids, span)
    assert "".join(out) == tokenizer.decode(ids, skip_special_tokens=True) == TEXT * 3
    if span == 1:
        assert "" in out  # a character's first bytes add no text until it is complete
    if kind == "span":
        assert len(decoder._ids) <= 2 * span + SpanDecoder.CONTEXT  # only the last span is kept as context


@pytest.mark.parametrize("span", [1, 2, 5])
def test_a_byte_level_bpe_with_merges_decodes_by_its_byte_table(bpe, span):
    """Random token sequences (merged tokens, pieces of characters, special and added tokens, an id past the
    vocabulary) cut into spans: the same text as the tokenizer's own decoding of the whole, special tokens skipped."""
    table = byte_level_table(bpe)
    assert table is not None and len(table) == bpe.get_vocab_size(with_added_tokens=True)
    special, added = bpe.token_to_id("<|im_end|>"), bpe.token_to_id("<think>")
    assert table[special] == b"" and table[added] == b"<think>"
    rng = random.Random(span)
    sequences = [bpe.encode(TEXT).ids + [special, added] + bpe.encode(" is 7").ids]
    sequences += [[rng.randrange(len(table)) for _ in range(40)] for _ in range(200)]
    for ids in sequences:
        decoder = TokenTexts(Wrapped(bpe)).decoder(None)
        assert isinstance(decoder, ByteSpanDecoder)
        complete = "".join(pieces(decoder, ids, span))
        whole = bpe.decode(ids, skip_special_tokens=True)
        # what the decoder still holds is an incomplete character at the very end, never text in the middle
        assert whole.startswith(complete) and set(whole[len(complete) :]) <= {"\ufffd"}
    decoder = ByteSpanDecoder(table)
    assert decoder.text([*bpe.encode("ab").ids, len(table) + 5], 3) == "ab"  # past the vocabulary: nothing


def test_a_tokenizer_that_is_not_byte_level_is_decoded_span_by_span():
    from tokenizers import Tokenizer, decoders, models

    metaspace = Tokenizer(models.WordLevel({"▁So": 0, "▁x": 1, "[UNK]": 2}, unk_token="[UNK]"))
    metaspace.decoder = decoders.Metaspace()
    assert byte_level_table(metaspace) is None
    decoder = TokenTexts(Wrapped(metaspace)).decoder([0])
    assert isinstance(decoder, SpanDecoder) and decoder.text([0, 1], 2) == " So x"  # the prompt's token as context
    assert TokenTexts(object()).decoder([1, 2]) is None  # no fast backend: vLLM detokenizes instead


class Differs:
    """A byte-level backend whose own decoding differs from its byte table: on single tokens or only on sequences."""

    def __init__(self, backend, on_sequences: bool):
        self.backend, self.on_sequences = backend, on_sequences
        self.decoder = backend.decoder

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def decode_batch(self, sequences, skip_special_tokens=True):
        texts = self.backend.decode_batch(sequences, skip_special_tokens=skip_special_tokens)
        return [t.lstrip() if (len(s) > 1) == self.on_sequences else t for s, t in zip(sequences, texts, strict=True)]


@pytest.mark.parametrize("on_sequences", [False, True])
def test_a_byte_table_that_differs_from_the_tokenizers_own_decoding_is_not_used(bpe, on_sequences):
    """The negative control of the table's check: a tokenizer that drops a leading space when decoding (single tokens,
    or only sequences) is decoded span by span."""
    assert byte_level_table(bpe) is not None
    assert byte_level_table(Differs(bpe, on_sequences)) is None
    assert isinstance(TokenTexts(Wrapped(Differs(bpe, on_sequences))).decoder([1]), SpanDecoder)


def test_span_decoder_hands_out_a_lone_replacement_character_after_a_few_tokens():
    class ByteBackend:
        def decode(self, ids, skip_special_tokens=True):
            return bytes(ids).decode("utf-8", errors="replace")

    ids = list(b"ab\xffcd\xe4\xb8")  # a stray byte, then a character cut at the end
    decoder = SpanDecoder(ByteBackend(), [])
    assert decoder.text(ids, 3) == "ab"  # "\xff" may still become a character: held back
    assert decoder.text(ids, 7) == "\ufffdcd"  # it did not: handed out; the cut "中" stays held
    assert decoder.text(ids + [0xAD], 8) == "中"
    table = ByteSpanDecoder([bytes([b]) for b in range(256)])  # the byte table: a stray byte is known bad at once
    assert table.text(ids, 3) == "ab\ufffd" and table.text(ids, 7) == "cd" and table.text(ids + [0xAD], 8) == "中"
