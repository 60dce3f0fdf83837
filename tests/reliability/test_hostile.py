"""Hostile or broken answers: each gives a typed tinkex error with a capped message, within
the call's deadline, with bounded memory.

Answers come from :mod:`tests.reliability.hostile_server` on the two sampling routes (the
handshake is well-behaved). The response-size cap is ``ServiceClient(max_response_bytes=...)``
(``Config.max_response_bytes``, 64 MiB by default): past it the transport stops reading and
raises ``APIConnectionError``, which the sampling layers treat like any broken connection
(resubmitted or re-polled with backoff, so the call ends at its deadline).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Iterator, Optional, Tuple, Type

import pytest

import tinkex
from tests.reliability.hostile_server import (
    MIB,
    HostileServer,
    flood,
    json_reply,
    raw,
    redirect,
    reply,
    result_body,
    sse,
)
from tinkex import errors, types

KEY = "tml-hostile-key-55555"
PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)
ASAMPLE, RETRIEVE, STREAM = "/api/v1/asample", "/api/v1/retrieve_future", "/api/v1/stream_sample"
DEADLINE_S = 2.5
SLACK_S = 2.0
MESSAGE_CAP = 1200  # generous: excerpts are capped at 200-500 characters plus the context around them
PROMISE = b'{"request_id":"req-1","model_id":"m","sample_sequence_ids":["req-1:seq:0"]}'
NESTED = b"[" * 200_000 + b"]" * 200_000


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def sample_error(server: HostileServer, deadline: float = DEADLINE_S,
                 **service: object) -> Tuple[Optional[BaseException], float]:
    with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, **service) as client:  # type: ignore[arg-type]
        sampler = client.create_sampling_client(base_model="m")
        started = time.monotonic()
        error = sampler.sample(PROMPT, 1, PARAMS, timeout=deadline).exception(deadline + 10)
        return error, time.monotonic() - started


def check(error: Optional[BaseException], elapsed: float, expected: Type[BaseException]) -> None:
    assert isinstance(error, expected), repr(error)
    assert isinstance(error, errors.TinkexError)
    assert len(str(error)) <= MESSAGE_CAP, f"{len(str(error))} characters: {str(error)[:300]}..."
    assert KEY not in str(error) and KEY not in repr(error)
    assert elapsed < DEADLINE_S + SLACK_S


HOSTILE_PROMISES = {
    "html instead of json": (reply(200, b"<html><body>" + b"x" * 5000 + b"</body></html>", "text/html"),
                             errors.DecodeError),
    "truncated json": (reply(200, PROMISE[:25]), errors.DecodeError),
    "invalid utf-8": (reply(200, b'{"request_id":"req-\xff\xfe","sample_sequence_ids":["a"]}'), errors.DecodeError),
    "deeply nested json": (reply(200, NESTED), errors.DecodeError),
    "number where a string belongs": (json_reply({"request_id": 12345, "sample_sequence_ids": [1]}),
                                      errors.DecodeError),
    "json array": (json_reply([1, 2, 3]), errors.DecodeError),
    "json null": (reply(200, b"null"), errors.DecodeError),
    "NaN constant": (reply(200, b'{"request_id":NaN}'), errors.DecodeError),
    "protobuf bytes": (reply(200, result_body(), "application/x-protobuf"), errors.DecodeError),
    "empty body": (reply(200, b""), errors.DecodeError),
    "huge 4xx html page": (reply(403, b"<h1>denied</h1>" * 100_000, "text/html"), errors.PermissionDeniedError),
    "broken http": (raw(b"HTTP/1.1 banana\r\n\r\n"), errors.APIConnectionError),
    "garbage then close": (raw(b"\x00\xff" * 1000), errors.APIConnectionError),
}

HOSTILE_RESULTS = {
    "truncated protobuf": (reply(200, result_body()[:-3], "application/x-protobuf"), errors.DecodeError),
    "json labelled protobuf": (reply(200, b'{"sequences":[]}', "application/x-protobuf"), errors.DecodeError),
    "protobuf labelled json": (reply(200, result_body(), "application/json"), errors.DecodeError),
    "protobuf with a bad stop reason": (reply(200, b"\x0a\x02\x08\x07", "application/x-protobuf"),
                                        errors.DecodeError),
    "protobuf with ragged tokens": (reply(200, b"\x0a\x04\x12\x02\x01\x02", "application/x-protobuf"),
                                    errors.DecodeError),
    "wrong content type text": (reply(200, b"all good, trust me", "text/plain"), errors.DecodeError),
    "truncated json": (reply(200, b'{"sequences":[{"tokens":[1,2'), errors.DecodeError),
    "deeply nested json": (reply(200, NESTED), errors.DecodeError),
    "numbers where strings belong": (json_reply({"sequences": [{"tokens": [1], "stop_reason": 7}]}),
                                     errors.DecodeError),
    "strings where numbers belong": (json_reply({"sequences": [{"tokens": ["a"], "stop_reason": "stop"}]}),
                                     errors.DecodeError),
    "invalid utf-8": (reply(200, b'{"type":"try_again","request_id":"\xc3\x28"}'), errors.DecodeError),
    "failed future with an enormous message": (json_reply({"error": "boom " * 50_000, "category": "server"}),
                                               errors.RequestFailedError),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PROMISES))
def test_hostile_asample_answers(hostile: HostileServer, case: str) -> None:
    behaviour, expected = HOSTILE_PROMISES[case]
    hostile.on(ASAMPLE, behaviour)
    check(*sample_error(hostile), expected)


@pytest.mark.parametrize("case", sorted(HOSTILE_RESULTS))
def test_hostile_retrieve_future_answers(hostile: HostileServer, case: str) -> None:
    behaviour, expected = HOSTILE_RESULTS[case]
    hostile.on(RETRIEVE, behaviour)
    check(*sample_error(hostile), expected)


def test_a_redirect_to_another_host_never_carries_the_key(hostile: HostileServer) -> None:
    with HostileServer(host="127.0.0.2") as elsewhere:
        elsewhere.on(ASAMPLE, lambda handler: (json_reply({"detail": "who are you?"}, 401) if "X-API-Key" not in
                                               handler.headers else json_reply({"detail": "stolen key"}, 418))(handler))
        hostile.on(ASAMPLE, redirect(elsewhere.base_url + ASAMPLE))
        error, elapsed = sample_error(hostile)
        check(error, elapsed, errors.AuthenticationError)
        landed = elsewhere.calls(ASAMPLE)
        assert landed and all("X-API-Key" not in call.headers for call in landed)
        assert all(KEY.encode() not in call.body for call in landed)
        assert all(KEY not in str(call.headers) for call in elsewhere.requests)


def test_a_redirect_loop_is_a_connection_error(hostile: HostileServer) -> None:
    hostile.on(ASAMPLE, redirect(hostile.base_url + ASAMPLE))
    error, elapsed = sample_error(hostile, max_retries=0)
    assert isinstance(error, errors.APIConnectionError)
    assert len(str(error)) <= MESSAGE_CAP and elapsed < DEADLINE_S + SLACK_S


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "until-close"])
@pytest.mark.parametrize("path", [ASAMPLE, RETRIEVE])
def test_50_mb_answers_over_a_small_cap_stop_early(hostile: HostileServer, path: str, declared: bool) -> None:
    hostile.on(path, flood(50 * 10**6, declare_length=declared))
    with traced_peak() as peak:
        error, elapsed = sample_error(hostile, deadline=1.2, max_response_bytes=1 * MIB)
    assert isinstance(error, errors.APITimeoutError), repr(error)  # re-sent or re-polled until the deadline
    assert "max_response_bytes" in str(error) or path == ASAMPLE
    assert len(str(error)) <= MESSAGE_CAP and elapsed < 1.2 + SLACK_S
    assert peak[0] < 8 * MIB, f"peak traced memory {peak[0] / MIB:.1f} MiB with a 1 MiB cap"


def test_a_50_mb_answer_under_the_default_cap_fails_to_decode_in_bounded_memory(hostile: HostileServer) -> None:
    hostile.on(RETRIEVE, flood(50 * 10**6, declare_length=False))
    with traced_peak() as peak:
        error, elapsed = sample_error(hostile, deadline=20.0)
    assert isinstance(error, errors.DecodeError), repr(error)
    assert len(str(error)) <= MESSAGE_CAP
    assert peak[0] < 3.5 * 50 * 10**6, f"peak traced memory {peak[0] / MIB:.1f} MiB for a 50 MB body"


class traced_peak:
    """Peak Python-allocated bytes inside the block (tracemalloc), as ``peak[0]``."""

    def __enter__(self) -> list:
        gc.collect()
        tracemalloc.start()
        self.peak = [0]
        return self.peak

    def __exit__(self, *exc: object) -> None:
        self.peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


SSE_GARBAGE = {
    "binary noise": (b"\x00\x01\xfe\xff" * 4096, (errors.DecodeError, errors.APIConnectionError)),
    "invalid utf-8": (b"event: token\ndata: {\"index\":0,\"token_id\":\xff}\n\n",
                      (errors.DecodeError,)),
    "not json": (b"event: token\ndata: {this is not json\n\n", (errors.DecodeError,)),
    "wrong types": (b'event: token\ndata: {"index":"zero","token_id":[1],"sequence_index":0}\n\n',
                    (errors.DecodeError,)),
    "truncated stream": (b'event: token\ndata: {"index":0,"token_id":5,"token":null,"logprob":null,'
                         b'"sequence_index":0}\n\n', (errors.APIConnectionError,)),
    "one endless line": (b"data: " + b"x" * (9 * MIB), (errors.DecodeError, errors.APIConnectionError)),
    "deeply nested data": (b"event: done\ndata: " + NESTED + b"\n\n", (errors.DecodeError,)),
}


@pytest.mark.parametrize("case", sorted(SSE_GARBAGE))
def test_an_sse_stream_of_garbage(hostile: HostileServer, case: str) -> None:
    body, expected = SSE_GARBAGE[case]
    hostile.on(STREAM, sse(body))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as client:
        sampler = client.create_sampling_client(base_model="m")
        started = time.monotonic()
        with pytest.raises(expected) as caught, sampler.sample_stream(PROMPT, PARAMS, timeout=DEADLINE_S) as stream:
            for _chunk in stream:
                pass
        assert len(str(caught.value)) <= MESSAGE_CAP
        assert KEY not in str(caught.value)
        assert time.monotonic() - started < DEADLINE_S + SLACK_S
