"""sample_stream's submit and read loops over the in-memory transport (protocol.md 9)."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any, List, Optional

import pytest

from tests.support.loops import Rig, call
from tinkex._sampling.stream import open_stream
from tinkex.errors import APIConnectionError, AuthenticationError, DecodeError, RequestFailedError
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
