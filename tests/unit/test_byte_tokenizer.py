"""The tinkex/byte tokenizer: round trips, special ids, and incremental decoding of split characters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinkex._wire.byte_tokenizer import BOS_ID, EOS_ID, TOKENIZER_ID, VOCAB_SIZE, ByteTokenizer
from tinkex.errors import ValidationError

TOKENIZER = ByteTokenizer()


def property_settings(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None)  # no deadline: CI machines are noisy
ids_with_specials = st.lists(st.integers(min_value=0, max_value=VOCAB_SIZE - 1), max_size=40)
# Lead and continuation bytes are over-represented so truncated and invalid sequences are common.
utf8_heavy_ids = st.lists(
    st.one_of(st.integers(0x80, 0xBF), st.integers(0xC0, 0xF7), st.integers(0, VOCAB_SIZE - 1)), max_size=40
)


def stream(ids: list) -> list:
    decoder = TOKENIZER.incremental_decoder()
    return [decoder.feed(token) for token in ids] + [decoder.flush()]


def test_constants_name_the_vocabulary() -> None:
    assert (TOKENIZER.name, TOKENIZER.vocab_size) == (TOKENIZER_ID, VOCAB_SIZE) == ("tinkex/byte", 258)
    assert (TOKENIZER.bos_token_id, TOKENIZER.eos_token_id) == (BOS_ID, EOS_ID) == (256, 257)


def test_encode_gives_utf8_bytes_after_optional_bos() -> None:
    assert TOKENIZER.encode("aé€") == [0x61, 0xC3, 0xA9, 0xE2, 0x82, 0xAC]
    assert TOKENIZER.encode("", add_bos=True) == [BOS_ID]


@property_settings(200)
@given(st.text())
def test_text_round_trips(text: str) -> None:
    assert TOKENIZER.decode(TOKENIZER.encode(text, add_bos=True) + [EOS_ID]) == text


@property_settings(200)
@given(st.text(min_size=1))
def test_streamed_text_never_shows_a_replacement_character(text: str) -> None:
    pieces = stream(TOKENIZER.encode(text))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces) or "\ufffd" in text


@property_settings(300)
@given(utf8_heavy_ids)
def test_streaming_equals_decoding_whole(ids: list) -> None:
    assert "".join(stream(ids)) == TOKENIZER.decode(ids)


def test_a_split_character_is_held_back_until_complete() -> None:
    assert stream(list("€".encode()) + [ord("!")]) == ["", "", "€", "!", ""]


def test_specials_decode_to_nothing_even_mid_character() -> None:
    euro = list("€".encode())
    ids = [BOS_ID, euro[0], EOS_ID, *euro[1:]]
    assert TOKENIZER.decode(ids) == "€"
    assert "".join(stream(ids)) == "€"
    assert TOKENIZER.decode_token(BOS_ID) == TOKENIZER.decode_token(EOS_ID) == b""
    assert TOKENIZER.decode_token(0xC3) == b"\xc3"


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert TOKENIZER.decode([0xFF, ord("a"), 0xC3]) == "\ufffda\ufffd"
    assert stream([0xC3]) == ["", "\ufffd"]


def test_flush_resets_the_decoder_for_reuse() -> None:
    decoder = TOKENIZER.incremental_decoder()
    decoder.feed(0xE2)
    assert decoder.flush() == "\ufffd"
    assert decoder.feed(ord("x")) == "x"


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE, 10**6])
def test_ids_outside_the_vocabulary_are_rejected(bad: int) -> None:
    with pytest.raises(ValidationError) as info:
        TOKENIZER.decode([65, bad])
    assert (info.value.field, info.value.value) == ("token_id", bad)
    with pytest.raises(ValidationError):
        TOKENIZER.incremental_decoder().feed(bad)
    with pytest.raises(ValidationError):
        TOKENIZER.decode_token(bad)


def test_text_that_is_not_encodable_is_rejected() -> None:
    with pytest.raises(ValidationError) as info:
        TOKENIZER.encode("\ud800")
    assert info.value.field == "text"
    with pytest.raises(ValidationError):
        TOKENIZER.encode(b"bytes")  # type: ignore[arg-type]
