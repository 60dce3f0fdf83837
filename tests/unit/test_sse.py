"""SSE parsing for stream_sample (protocol.md 9.2), without sockets.

The parser is fed byte chunks exactly as a socket could deliver them: split anywhere,
including between the ``\\r`` and ``\\n`` of one line ending and inside a UTF-8 character.
"""

from __future__ import annotations

import io
from typing import Iterable, List, Sequence

import attrs
import pytest
import requests
import urllib3
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import property_settings, sample_responses
from tinkex._clock import Clock
from tinkex._http.sse import ServerEvent, decode_chunk, iter_events, read_chunks
from tinkex._sampling.stream import _Progress, _Texts, chunks_of_response
from tinkex._wire.byte_tokenizer import ByteTokenizer
from tinkex.errors import APITimeoutError, DecodeError
from tinkex.types import (
    RequestErrorCategory,
    SampledSequence,
    SampleResponse,
    SampleStreamChunk,
    StopReason,
    StreamChunkKind,
)

STREAM = (
    b'event: token\ndata: {"index":0,"token_id":72,"token":"H","logprob":-0.5,"sequence_index":0}\n\n'
    b": keep-alive\n\n"
    b'event: token\ndata: {"index":1,"token_id":105,"token":"i","logprob":-1.25,"sequence_index":0}\n\n'
    b'event: done\ndata: {"finish_reason":"length","total_tokens":2,"sequence_index":0}\n\n'
)
EXPECTED = [
    SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=0, token_id=72, token="H", logprob=-0.5),
    SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=1, token_id=105, token="i", logprob=-1.25),
    SampleStreamChunk(kind=StreamChunkKind.DONE, finish_reason=StopReason.LENGTH, total_tokens=2),
]


def split_at(data: bytes, sizes: Sequence[int]) -> List[bytes]:
    """Cut ``data`` into pieces of the given sizes, cycling through them."""
    pieces, at, i = [], 0, 0
    while at < len(data):
        size = sizes[i % len(sizes)]
        pieces.append(data[at:at + size])
        at, i = at + size, i + 1
    return pieces


def chunks(parts: Iterable[bytes]) -> List[SampleStreamChunk]:
    decoded = (decode_chunk(event) for event in iter_events(parts))
    return [chunk for chunk in decoded if chunk is not None]


def events(data: bytes) -> List[ServerEvent]:
    return list(iter_events([data]))


# -- framing ---------------------------------------------------------------------------------


def test_token_and_done_events_in_one_read() -> None:
    assert chunks([STREAM]) == EXPECTED
    assert [c.kind for c in chunks([STREAM])] == ["token", "token", "done"]


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_endings(ending: bytes) -> None:
    assert chunks([STREAM.replace(b"\n", ending)]) == EXPECTED


def test_mixed_line_endings_still_end_events() -> None:
    # sseclient-py alone merges events whose blank line mixes endings ("\n" then "\r\n").
    mixed = (b'event: token\ndata: {"index":0,"token_id":1}\n\r\n'
             b'event: token\r\ndata: {"index":1,"token_id":2}\r\n\r'
             b'event: done\rdata: {"finish_reason":"stop","total_tokens":2}\r\r\n')
    assert [(c.kind, c.index) for c in chunks([mixed])] == [("token", 0), ("token", 1), ("done", None)]


@pytest.mark.parametrize("sizes", [[1], [2], [3], [5, 1], [7, 13, 2], [64]], ids=str)
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_split_packets(sizes: List[int], ending: bytes) -> None:
    assert chunks(split_at(STREAM.replace(b"\n", ending), sizes)) == EXPECTED


@property_settings(200)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30),
       ending=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_split_gives_the_same_chunks(cuts: List[int], ending: bytes) -> None:
    text = STREAM.replace(b"\n", ending).replace(b'"H"', '"é"'.encode())  # a 2-byte character to cut
    assert chunks(split_at(text, cuts)) == [attrs.evolve(EXPECTED[0], token="é"), *EXPECTED[1:]]


def test_crlf_split_between_cr_and_lf_right_before_the_blank_line() -> None:
    parts = [b'event: done\r\ndata: {"finish_reason":"stop","total_tokens":0}\r', b"\n", b"\r", b"\n"]
    assert [e.complete for e in iter_events(parts)] == [True]
    assert chunks(parts)[0].finish_reason is StopReason.STOP


def test_empty_reads_are_harmless() -> None:
    parts = [b"", b'event: done\r', b"", b'\ndata: {"finish_reason":"stop","total_tokens":0}\r\n', b"", b"\r\n"]
    assert len(chunks(parts)) == 1


def test_comments_are_ignored_and_comment_only_blocks_dispatch_nothing() -> None:
    assert events(b": keep-alive\n\n:\n\n: another\n\n") == []
    data = b': hello\nevent: token\n: between fields\ndata: {"index":0,"token_id":9}\n\n'
    assert [(c.kind, c.token_id) for c in chunks([data])] == [("token", 9)]


def test_multi_line_data_is_joined_with_newlines() -> None:
    data = b'event: token\ndata: {"index":0,\ndata: "token_id":5,\ndata:"token":"x"}\n\n'
    (event,) = events(data)
    assert event.data == '{"index":0,\n"token_id":5,\n"token":"x"}'
    assert decode_chunk(event) == SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=0, token_id=5, token="x")


def test_only_one_space_after_the_colon_is_stripped() -> None:
    (event,) = events(b'event:token\ndata:  {"index":0,"token_id":5}\n\n')
    assert event.name == "token" and event.data == ' {"index":0,"token_id":5}'
    (padded,) = events(b'event:  token\ndata: {"index":0,"token_id":5}\n\n')
    assert padded.name == " token" and decode_chunk(padded) is None  # an unknown name, so ignored


def test_missing_final_newline_still_delivers_a_whole_last_event() -> None:
    body = STREAM.rstrip(b"\n")
    got = list(iter_events(split_at(body, [7])))
    assert [e.complete for e in got] == [True, True, False]
    assert [decode_chunk(e) for e in got] == EXPECTED
    single = list(iter_events([STREAM[:-1]]))  # one newline instead of two
    assert single[-1].complete is False and decode_chunk(single[-1]) == EXPECTED[-1]


def test_a_body_cut_inside_an_event_is_marked_incomplete() -> None:
    cut = STREAM[: len(STREAM) - 20]
    last = list(iter_events([cut]))[-1]
    assert last.complete is False
    with pytest.raises(DecodeError):
        decode_chunk(last)


def test_unknown_event_names_and_nameless_events_are_ignored() -> None:
    data = (b'event: progress\ndata: {"percent":50}\n\n'
            b'data: {"index":0,"token_id":1,"token":"a"}\n\n'  # Tinkex 0.3.4 style: no event name
            b'event: done\ndata: {"finish_reason":"stop","total_tokens":0}\n\n')
    assert [e.name for e in events(data)] == ["progress", "message", "done"]
    assert [c.kind for c in chunks([data])] == ["done"]


def test_id_and_retry_fields_are_ignored() -> None:
    data = b'id: 41\nretry: 10\nevent: token\nid\ndata: {"index":0,"token_id":3}\nretry: soon\n\n'
    assert chunks([data]) == [SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=0, token_id=3)]


def test_unknown_fields_and_fields_without_colon() -> None:
    data = b'event: token\nfoo: bar\ndata\ndata: {"index":0,"token_id":3}\n\n'
    (event,) = events(data)
    assert event.data == '\n{"index":0,"token_id":3}'  # a bare "data" line adds an empty line
    assert decode_chunk(event) is not None


def test_a_leading_byte_order_mark_is_stripped_even_when_split() -> None:
    body = b"\xef\xbb\xbf" + STREAM
    assert chunks([body]) == EXPECTED
    assert chunks(split_at(body, [1])) == EXPECTED
    assert chunks([b"\xef", b"\xbb", b"\xbf" + STREAM]) == EXPECTED


def test_utf8_split_inside_a_character_across_reads() -> None:
    data = 'event: token\ndata: {"index":0,"token_id":1,"token":"日本"}\n\n'.encode()
    assert chunks(split_at(data, [1]))[0].token == "日本"


def test_invalid_utf8_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="UTF-8"):
        events(b'event: token\ndata: {"token":"\xff"}\n\n')


def test_an_oversized_event_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="exceeded 100 bytes"):
        list(iter_events([b"data: " + b"x" * 200], max_event_bytes=100))
    # many small events are fine: the limit is per event
    assert len(list(iter_events([b"data: 1\n\n" * 100], max_event_bytes=20))) == 100


# -- decoding --------------------------------------------------------------------------------


def test_missing_sequence_index_is_zero_and_a_given_one_is_kept() -> None:
    assert decode_chunk(ServerEvent("token", '{"index":0,"token_id":1}')).sequence_index == 0
    assert decode_chunk(ServerEvent("token", '{"index":0,"token_id":1,"sequence_index":3}')).sequence_index == 3
    assert decode_chunk(ServerEvent("done", '{"finish_reason":"stop","total_tokens":1,"sequence_index":2}')) \
        .sequence_index == 2


def test_null_optional_fields() -> None:
    chunk = decode_chunk(ServerEvent("token", '{"index":4,"token_id":1,"token":null,"logprob":null}'))
    assert chunk is not None and chunk.token is None and chunk.logprob is None
    assert decode_chunk(ServerEvent("token", '{"index":0,"token_id":1,"logprob":-2}')).logprob == -2.0


def test_the_kind_comes_from_the_event_name_not_the_payload() -> None:
    chunk = decode_chunk(ServerEvent("token", '{"index":0,"token_id":1,"finish_reason":"stop"}'))
    assert chunk is not None and chunk.kind is StreamChunkKind.TOKEN and chunk.finish_reason is None


def test_error_event_keeps_message_and_category() -> None:
    chunk = decode_chunk(ServerEvent("error", '{"message":"model crashed","category":"server"}'))
    assert chunk == SampleStreamChunk(kind=StreamChunkKind.ERROR, message="model crashed",
                                      category=RequestErrorCategory.SERVER)
    bare = decode_chunk(ServerEvent("error", "{}"))
    assert bare is not None and bare.category is RequestErrorCategory.UNKNOWN and bare.message


@pytest.mark.parametrize("data", ["[DONE]", "", "{", "not json", "NaN"])
def test_invalid_json_data_is_a_decode_error_not_dropped(data: str) -> None:
    with pytest.raises(DecodeError, match="stream_sample token event"):
        decode_chunk(ServerEvent("token", data))


@pytest.mark.parametrize(
    ("name", "data", "field"),
    [
        ("token", "[1,2]", "JSON object"),
        ("token", '{"token_id":1}', "'index'"),
        ("token", '{"index":0}', "'token_id'"),
        ("token", '{"index":"0","token_id":1}', "'index'"),
        ("token", '{"index":0,"token_id":true}', "'token_id'"),
        ("token", '{"index":0,"token_id":1,"token":5}', "'token'"),
        ("token", '{"index":0,"token_id":1,"sequence_index":-1}', "sequence_index"),
        ("done", '{"total_tokens":1}', "'finish_reason'"),
        ("done", '{"finish_reason":"eos","total_tokens":1}', "finish_reason 'eos'"),
        ("done", '{"finish_reason":"stop"}', "'total_tokens'"),
    ],
)
def test_malformed_payloads_name_the_field(name: str, data: str, field: str) -> None:
    with pytest.raises(DecodeError, match=field):
        decode_chunk(ServerEvent(name, data))


# -- reading a response body -----------------------------------------------------------------


def body_response(data: bytes) -> requests.Response:
    response = requests.Response()
    response.raw = urllib3.HTTPResponse(body=io.BytesIO(data), preload_content=False, headers={})
    response.status_code = 200
    response.url = "http://127.0.0.1:1/api/v1/stream_sample"
    return response


def test_read_chunks_reads_the_whole_body_in_bounded_reads() -> None:
    got = list(read_chunks(body_response(STREAM), clock=Clock(), idle_timeout=5.0, read_size=10))
    assert b"".join(got) == STREAM and max(len(part) for part in got) <= 10


def test_read_chunks_stops_at_the_deadline() -> None:
    now = [100.0]
    clock = Clock(monotonic=lambda: now[0])
    reader = read_chunks(body_response(STREAM), clock=clock, idle_timeout=5.0, deadline=101.0, read_size=10)
    assert next(reader)
    now[0] = 101.0
    with pytest.raises(APITimeoutError, match="deadline"):
        next(reader)


# -- sequence bookkeeping, fallback chunks and text ------------------------------------------


def token(seq: int, index: int, token_id: int = 1) -> SampleStreamChunk:
    return SampleStreamChunk(kind=StreamChunkKind.TOKEN, sequence_index=seq, index=index, token_id=token_id)


def done(seq: int, total: int) -> SampleStreamChunk:
    return SampleStreamChunk(kind=StreamChunkKind.DONE, sequence_index=seq, finish_reason=StopReason.STOP,
                             total_tokens=total)


def test_progress_accepts_interleaved_sequences() -> None:
    progress = _Progress(2)
    for chunk in [token(1, 0), token(0, 0), token(1, 1), done(1, 2), token(0, 1)]:
        progress.check(chunk)
    assert progress.unfinished == [0]
    progress.check(done(0, 2))
    assert progress.unfinished == []


@pytest.mark.parametrize(
    ("sequence", "message"),
    [
        ([token(0, 1)], "index 1, expected 0"),
        ([token(0, 0), token(0, 0)], "index 0, expected 1"),
        ([token(2, 0)], "sequence_index 2"),
        ([token(0, 0), done(0, 2)], "total_tokens=2 after 1"),
        ([done(0, 0), token(0, 0)], "after its done"),
        ([done(0, 0), done(0, 0)], "after its done"),
    ],
)
def test_progress_rejects_what_the_protocol_forbids(sequence: List[SampleStreamChunk], message: str) -> None:
    progress = _Progress(2)
    with pytest.raises(DecodeError, match=message):
        for chunk in sequence:
            progress.check(chunk)


def test_fallback_chunks_follow_the_response() -> None:
    response = SampleResponse(sequences=[
        SampledSequence(tokens=[5, 6], logprobs=[-0.5, -1.0], stop_reason=StopReason.LENGTH),
        SampledSequence(tokens=[7], logprobs=None, stop_reason=StopReason.STOP),
    ])
    got = chunks_of_response(response)
    assert [(c.kind, c.sequence_index, c.index, c.token_id, c.logprob, c.token) for c in got] == [
        ("token", 0, 0, 5, -0.5, None), ("token", 0, 1, 6, -1.0, None), ("done", 0, None, None, None, None),
        ("token", 1, 0, 7, None, None), ("done", 1, None, None, None, None),
    ]
    assert (got[2].finish_reason, got[2].total_tokens, got[4].finish_reason, got[4].total_tokens) == \
        (StopReason.LENGTH, 2, StopReason.STOP, 1)


@property_settings(100)
@given(response=sample_responses())
def test_fallback_chunks_rebuild_the_response(response: SampleResponse) -> None:
    got = chunks_of_response(response)
    progress = _Progress(len(response.sequences))
    for chunk in got:
        progress.check(chunk)
    assert progress.unfinished == []
    for index, seq in enumerate(response.sequences):
        mine = [c for c in got if c.sequence_index == index and c.is_token]
        assert [c.token_id for c in mine] == seq.tokens
        if seq.logprobs is not None:
            assert [c.logprob for c in mine] == seq.logprobs


def test_text_pieces_join_to_the_decoded_text_per_sequence() -> None:
    tokenizer = ByteTokenizer()
    ids = {0: list("naïve 日本 ✓".encode()), 1: list("€!".encode())}
    stream: List[SampleStreamChunk] = []
    for i in range(max(len(v) for v in ids.values())):  # interleave the two sequences
        stream += [token(seq, i, ids[seq][i]) for seq in (0, 1) if i < len(ids[seq])]
    stream += [done(0, len(ids[0])), done(1, len(ids[1]))]
    texts = _Texts(tokenizer)
    out = [texts.apply(chunk) for chunk in stream]
    for seq, expected in ((0, "naïve 日本 ✓"), (1, "€!")):
        pieces = [c.token for c in out if c.sequence_index == seq and c.token]
        assert "".join(pieces) == expected and "\ufffd" not in "".join(pieces)
    assert all(c.token is not None for c in out if c.is_token)


def test_a_character_cut_off_at_the_end_goes_into_the_done_chunk() -> None:
    texts = _Texts(ByteTokenizer())
    pieces = [texts.apply(token(0, 0, 0x61)).token, texts.apply(token(0, 1, 0xE6)).token]
    last = texts.apply(done(0, 2))
    assert pieces == ["a", ""] and last.token == "\ufffd"  # exactly what decode() gives for the same ids
    assert "".join(pieces) + (last.token or "") == ByteTokenizer().decode([0x61, 0xE6])


def test_without_a_tokenizer_the_servers_text_is_kept() -> None:
    chunk = SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=0, token_id=1, token="server")
    assert _Texts(None).apply(chunk) is chunk
    assert _Texts(None).apply(done(0, 0)).token is None
