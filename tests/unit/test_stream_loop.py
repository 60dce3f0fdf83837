"""sample_stream's submit and read loops over the in-memory transport (protocol.md 9)."""

from __future__ import annotations

import gc
from concurrent.futures import Future
from typing import Any, List, Optional

import pytest

from tests.support.loops import Rig, call
from tinkex._sampling.stream import StreamIterator, _Texts, open_stream, text_pieces
from tinkex.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    DecodeError,
    RequestFailedError,
    ValidationError,
)
from tinkex.types import SampledSequence, SampleResponse, StopReason

SSE = {"content-type": "text/event-stream"}


def events(*lines: str) -> bytes:
    return "".join(f"{line}\n\n" for line in lines).encode()


TWO_TOKENS = events(
    'event: token\ndata: {"index": 0, "token_id": 72, "token": "H"}',
    'event: token\ndata: {"index": 1, "token_id": 105, "token": "i"}',
    'event: done\ndata: {"finish_reason": "length", "total_tokens": 2}',
)


def run(rig: Rig, fallback: Optional[Any] = None) -> List[Any]:
    def no_fallback(_timeout: Optional[float]) -> Future:
        raise AssertionError("the fallback should not run")

    stream = open_stream(rig.sampler, rig.target.current or rig.state, call(), 1, idle_timeout=5.0,
                         tokenizer=None, secret="", fallback=fallback or no_fallback)
    with stream:
        return list(stream)


def test_a_stream_yields_its_chunks_in_order() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, TWO_TOKENS, SSE))
    chunks = run(rig)
    assert [(c.kind.value, c.token_id, c.token) for c in chunks] == [
        ("token", 72, "H"), ("token", 105, "i"), ("done", None, None)]
    (sent,) = rig.transport.calls_to("stream_sample")
    assert sent.headers["Accept"] == "text/event-stream" and sent.body["seq_id"] == 0


def test_429_and_503_before_the_stream_resend_the_same_seq_id() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (429, b"{}"), (503, b"{}"), (200, TWO_TOKENS, SSE))
    assert len(run(rig)) == 3
    assert rig.seq_ids("stream_sample") == [0, 0, 0]
    assert rig.time.sleeps == [1.0, 1.0]  # the session's 429 backoff, then the 1 s resend pause


def test_a_final_status_is_raised_before_iteration() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (401, {"detail": "invalid API key"}))
    with pytest.raises(AuthenticationError):
        run(rig)


def test_404_falls_back_to_sample_and_remembers_it() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (404, {"detail": "Not Found"}))
    result: Future = Future()
    result.set_result(SampleResponse(sequences=[SampledSequence(tokens=[5], logprobs=[-1.0],
                                                                stop_reason=StopReason.STOP)]))
    chunks = run(rig, fallback=lambda timeout: result)
    assert [(c.kind.value, c.token_id) for c in chunks] == [("token", 5), ("done", None)]
    assert rig.target.current is not None and rig.target.current.stream_supported is False


def test_a_stream_cut_short_says_how_many_chunks_arrived() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, events('event: token\ndata: {"index": 0, "token_id": 1}'), SSE))
    with pytest.raises(APIConnectionError, match="after 1 chunk"):
        run(rig)


def test_an_error_event_is_a_failed_request() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, events('event: error\ndata: {"message": "boom", "category": "server"}'),
                                       SSE))
    with pytest.raises(RequestFailedError, match="boom"):
        run(rig)


def test_a_200_that_is_not_an_event_stream_is_a_decode_error() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, b"{}", {"content-type": "application/json"}))
    with pytest.raises(DecodeError, match="not text/event-stream"):
        run(rig)


def open_on(rig: Rig, num_samples: int = 1, deadline: Optional[float] = None,
            fallback: Optional[Any] = None) -> StreamIterator:
    def no_fallback(_timeout: Optional[float]) -> Future:
        raise AssertionError("the fallback should not run")

    return open_stream(rig.sampler, rig.target.current or rig.state, call(deadline=deadline), num_samples,
                       idle_timeout=5.0, tokenizer=None, secret="", fallback=fallback or no_fallback)


def test_events_with_names_the_protocol_does_not_define_are_skipped() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, events('event: progress\ndata: {"percent": 50}') + TWO_TOKENS, SSE))
    assert [c.kind.value for c in run(rig)] == ["token", "token", "done"]


def test_a_finished_stream_stays_finished_and_says_so() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, TWO_TOKENS, SSE))
    stream = open_on(rig)
    assert repr(stream) == "<StreamIterator open, 0 chunk(s) received>"
    assert len(list(stream)) == 3
    with pytest.raises(StopIteration):
        next(stream)
    assert repr(stream) == "<StreamIterator closed, 3 chunk(s) received>"


def test_a_stream_collected_while_its_close_fails_raises_nothing() -> None:
    """The finaliser may run at interpreter exit: a failing close must not escape it (an unraisable
    exception fails this test under the suite's ``filterwarnings = error``)."""

    class BrokenSource:
        delivered = 0
        request_id = None
        closes = 0

        def close(self) -> None:
            BrokenSource.closes += 1
            raise RuntimeError("the connection pool is already gone")

    stream = StreamIterator(BrokenSource(), _Texts(None))  # type: ignore[arg-type]
    del stream
    gc.collect()
    assert BrokenSource.closes == 1


def test_text_pieces_take_sequence_zero_only() -> None:
    rig = Rig()
    body = events(
        'event: token\ndata: {"sequence_index": 1, "index": 0, "token_id": 66, "token": "B"}',
        'event: token\ndata: {"sequence_index": 0, "index": 0, "token_id": 65, "token": "A"}',
        'event: done\ndata: {"sequence_index": 1, "finish_reason": "length", "total_tokens": 1}',
        'event: done\ndata: {"sequence_index": 0, "finish_reason": "length", "total_tokens": 1}',
    )
    rig.transport.on("stream_sample", (200, body, SSE))
    assert list(text_pieces(open_on(rig, num_samples=2), "m")) == ["A"]


def test_text_pieces_without_any_text_for_a_token_is_a_validation_error() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (200, events('event: token\ndata: {"index": 0, "token_id": 65}'), SSE))
    pieces = text_pieces(open_on(rig), "unknown-model")
    with pytest.raises(ValidationError, match="no text for token 65") as raised:
        next(pieces)
    assert raised.value.field == "base_model" and raised.value.value == "unknown-model"


def test_the_fallback_sample_gets_the_time_left_before_the_deadline() -> None:
    rig = Rig()
    rig.transport.on("stream_sample", (404, {"detail": "Not Found"}))
    timeouts: List[Optional[float]] = []
    result: Future = Future()
    result.set_result(SampleResponse(sequences=[SampledSequence(tokens=[5], stop_reason=StopReason.STOP)]))

    def fallback(timeout: Optional[float]) -> Future:
        timeouts.append(timeout)
        return result

    with open_on(rig, deadline=rig.time.now + 30.0, fallback=fallback) as stream:
        assert [c.kind.value for c in stream] == ["token", "done"]
    assert timeouts == [pytest.approx(30.0)]


def test_a_deadline_gone_before_the_fallback_is_a_timeout_without_sending_it() -> None:
    rig = Rig()

    def not_found_late(_call: Any) -> tuple:
        rig.time.advance(31.0)
        return 404, {"detail": "Not Found"}

    rig.transport.on("stream_sample", not_found_late)
    with pytest.raises(APITimeoutError, match="before the fallback sample was sent"):
        open_on(rig, deadline=rig.time.now + 30.0, fallback=lambda _t: pytest.fail("sent after the deadline"))
