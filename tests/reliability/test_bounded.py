"""Answers that cost more to hold than to send: each fails its own request at once, in bounded memory.

Issue 16 items 9 (a ``complete_metadata`` declaring a result over ``max_response_bytes``), 10 (a
bare CR in a response header) and 11 (a protobuf of repeated empty sequences, too many tokens
for ``max_tokens``, a gzip body that inflates to the whole byte cap).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from concurrent.futures import Future
from typing import Any, Iterator, List

import pytest

import tinkex
from tests.reliability.hostile_server import MIB, HostileServer, json_reply, reply
from tests.reliability.test_hostile import traced_peak
from tinkex import errors, types
from tinkex._wire.proto import encode_sample_response
from tinkex.types import SampledSequence, SampleResponse, StopReason

KEY = "tml-bounded-1111"
ASAMPLE, RETRIEVE = "/api/v1/asample", "/api/v1/retrieve_future"
PARAMS = types.SamplingParams(max_tokens=3, seed=1)
PROTOBUF = "application/x-protobuf"
FAST_S = 2.0  # "at once": well below the deadline the calls are given


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def one_sample(server: HostileServer, deadline: float = 20.0, **service: object) -> tuple:
    with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, **service) as client:  # type: ignore[arg-type]
        sampler = client.create_sampling_client(base_model="m")
        started = time.monotonic()
        error = sampler.sample(types.ModelInput.from_ints([1, 2]), 1, PARAMS, timeout=deadline).exception(
            deadline + 10)
        return error, time.monotonic() - started


def result(sequences: int = 1, tokens: int = 3) -> bytes:
    return encode_sample_response(SampleResponse(sequences=[
        SampledSequence(tokens=list(range(tokens)), logprobs=[-0.5] * tokens, stop_reason=StopReason.LENGTH)
        for _ in range(sequences)]))


# -- item 9 -----------------------------------------------------------------------------------

def promise_by_prompt(handler: object) -> None:
    """Each prompt gets its own request id: prompt [1] is req-big, any other req-small."""
    body = handler.request_body  # type: ignore[attr-defined]
    name = "req-big" if b'"tokens":[1]' in body else "req-small"
    json_reply({"request_id": name, "model_id": "m", "sample_sequence_ids": [f"{name}:seq:0"]})(handler)


def metadata_or_result(handler: object) -> None:
    body = handler.request_body  # type: ignore[attr-defined]
    if b"req-big" in body and b'"allow_metadata_only":true' in body:
        json_reply({"status": "complete_metadata", "response_payload_size": 10**12})(handler)
    elif b"req-big" in body:
        handler.server_stop.wait(20)  # type: ignore[attr-defined]  # never sends the 1 TB it declared
    else:
        reply(200, result(), PROTOBUF)(handler)


class Completions:
    """``retrieve_futures`` for poller mode: every issued request completes at once, req-big
    declaring 10^12 bytes."""

    def __init__(self) -> None:
        self.issued: List[str] = []
        self.lock = threading.Lock()

    def promise(self, handler: Any) -> None:
        name = "req-big" if b'"tokens":[1]' in handler.request_body else "req-small"
        with self.lock:
            self.issued.append(name)
        promise_by_prompt(handler)

    def futures(self, handler: Any) -> None:
        cursor = json.loads(handler.request_body).get("prev_cursor", 0)
        with self.lock:
            issued = list(self.issued)
        if cursor >= len(issued):
            handler.server_stop.wait(0.2)
        items = [{"request_id": name, "state": "finished",
                  "response_payload_uncompressed_size": 10**12 if name == "req-big" else len(result())}
                 for name in issued[cursor:]]
        json_reply({"completions": items, "cursor": len(issued)})(handler)


@pytest.mark.parametrize("mode", ["retrieve_future", "poller"])
def test_an_oversized_declared_result_fails_at_once_and_blocks_no_other_download(hostile: HostileServer,
                                                                                 mode: str) -> None:
    hostile.on(ASAMPLE, promise_by_prompt)
    hostile.on(RETRIEVE, metadata_or_result)
    if mode == "poller":
        completions = Completions()
        hostile.on("/api/v1/client/config", json_reply({"sample_use_retrieve_futures": True}))
        hostile.on(ASAMPLE, completions.promise)
        hostile.on("/api/v1/retrieve_futures", completions.futures)
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
        client = service.create_sampling_client(base_model="m")
        started = time.monotonic()
        big = client.sample(types.ModelInput.from_ints([1]), 1, PARAMS, timeout=15)
        time.sleep(0.3)  # the big one holds (or tries to hold) the byte budget first
        small = client.sample(types.ModelInput.from_ints([2]), 1, PARAMS, timeout=15)
        assert small.result(FAST_S).sequences[0].tokens == [0, 1, 2]
        error = big.exception(FAST_S)
        elapsed = time.monotonic() - started
    assert isinstance(error, errors.DecodeError), repr(error)
    assert "max_response_bytes" in str(error) and str(10**12) in str(error)
    assert elapsed < FAST_S + 0.3
    if mode == "poller":
        assert hostile.calls("/api/v1/retrieve_futures")


# -- item 10 ----------------------------------------------------------------------------------

def raw_then_hold(data: bytes) -> object:
    """Write ``data`` and keep the connection open: a lost Content-Length would hang the reader."""
    def behave(handler: object) -> None:
        handler.wfile.write(data)  # type: ignore[attr-defined]
        handler.wfile.flush()  # type: ignore[attr-defined]
        handler.server_stop.wait()  # type: ignore[attr-defined]
        handler.close_connection = True  # type: ignore[attr-defined]
    return behave


PROMISE = b'{"request_id":"req-1","model_id":"m","sample_sequence_ids":["req-1:seq:0"]}'


@pytest.mark.parametrize("path", [ASAMPLE, RETRIEVE])
def test_a_bare_cr_in_a_header_fails_fast_with_decode_error(hostile: HostileServer, path: str) -> None:
    body, kind = (PROMISE, "application/json") if path == ASAMPLE else (result(), PROTOBUF)
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nX-Note: a\rb\r\nContent-Length: %d\r\n\r\n%s"
              % (kind.encode(), len(body), body))
    hostile.on(path, raw_then_hold(answer))
    error, elapsed = one_sample(hostile, deadline=10.0)
    assert isinstance(error, errors.DecodeError), repr(error)
    assert "malformed response headers" in str(error) and hostile.base_url in str(error)
    assert elapsed < FAST_S


# -- item 11 ----------------------------------------------------------------------------------

EMPTY_SEQUENCES = b"\x0a\x00" * (2 * MIB)  # 4 MiB: two million empty sequences


@pytest.mark.parametrize("case,body,encoding", [
    ("4 MiB of empty sequences", EMPTY_SEQUENCES, None),
    ("2 sequences for num_samples=1", result(sequences=2), None),
    ("4 tokens for max_tokens=3", result(tokens=4), None),
    ("65 KB gzip of 64 MiB empty sequences", b"\x0a\x00" * (32 * MIB - 8), "gzip"),
], ids=lambda value: value if isinstance(value, str) and len(value) < 60 else "")
def test_a_result_larger_than_the_request_can_produce_is_refused(hostile: HostileServer, case: str, body: bytes,
                                                                 encoding: object) -> None:
    headers: List[tuple] = []
    if encoding == "gzip":
        body = gzip.compress(body, compresslevel=9)
        assert len(body) < 100_000
        headers.append(("Content-Encoding", "gzip"))
    hostile.on(RETRIEVE, reply(200, body, PROTOBUF, headers=headers))
    with traced_peak() as peak:
        error, elapsed = one_sample(hostile)
    assert isinstance(error, errors.DecodeError), repr(error)
    assert "more than the request can produce" in str(error)
    assert elapsed < FAST_S + (3.0 if encoding else 0.0)  # inflating 64 MiB takes a moment
    assert peak[0] < 3 * 64 * MIB + 16 * MIB, f"peak traced memory {peak[0] / MIB:.0f} MiB"


def test_a_json_result_of_empty_objects_is_refused_before_parsing(hostile: HostileServer) -> None:
    body = b'{"sequences":[' + b"{}," * (1 * MIB) + b"{}]}"
    hostile.on(RETRIEVE, reply(200, body))
    with traced_peak() as peak:
        error, elapsed = one_sample(hostile)
    assert isinstance(error, errors.DecodeError), repr(error)
    assert elapsed < FAST_S
    assert peak[0] < 32 * MIB, f"peak traced memory {peak[0] / MIB:.0f} MiB"


def test_results_within_the_bounds_still_decode(hostile: HostileServer) -> None:
    """The bounds are the request's: num_samples=2 with max_tokens=3 may get two 3-token sequences."""
    hostile.on(RETRIEVE, reply(200, result(sequences=2), PROTOBUF))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
        client = service.create_sampling_client(base_model="m")
        future: Future = client.sample(types.ModelInput.from_ints([1, 2]), 2, PARAMS, timeout=10)
        assert [s.tokens for s in future.result(15).sequences] == [[0, 1, 2], [0, 1, 2]]
