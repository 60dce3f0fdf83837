"""``stream_sample`` (protocol section 9): format, incremental delivery, keep-alives, disconnects."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.with_server.conftest import RawApi, sample_body
from tinkex._wire.proto import decode_sample_response
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL

Event = Tuple[float, str, Dict[str, Any]]


class Stream:
    """One raw SSE response read line by line as it arrives (http.client, no buffering layer)."""

    def __init__(self, server: LocalServer, body: Dict[str, Any]) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        headers = {"X-API-Key": server.api_key, "Content-Type": "application/json", "Accept": "text/event-stream",
                   "X-Tinker-Request-Type": "StreamSample"}  # fmt: skip
        self.began = time.monotonic()
        self.connection.request("POST", "/api/v1/stream_sample", body=json.dumps(body), headers=headers)
        self.response = self.connection.getresponse()
        self.lines: List[bytes] = []

    def events(self) -> Iterator[Event]:
        name: Optional[str] = None
        while True:
            line = self.response.readline()
            if not line:
                return
            self.lines.append(line)
            if line.startswith(b"event: "):
                name = line[7:].strip().decode()
            elif line.startswith(b"data: "):
                assert name is not None
                yield time.monotonic() - self.began, name, json.loads(line[6:])

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def streams() -> Iterator[Callable[[LocalServer, Dict[str, Any]], Stream]]:
    opened: List[Stream] = []

    def open_stream(server: LocalServer, body: Dict[str, Any]) -> Stream:
        stream = Stream(server, body)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_stream_format_matches_asample(local_server: LocalServer, api: RawApi, streams: Callable) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    params = {"max_tokens": 12, "seed": 3, "temperature": 0.8}
    stream = streams(local_server, sample_body(sampler, 0, num_samples=2, sampling_params=params))
    assert stream.response.status == 200
    assert stream.response.getheader("Content-Type").startswith("text/event-stream")
    assert stream.response.getheader("Cache-Control") == "no-cache"
    assert stream.response.getheader("Content-Encoding") is None
    events = [(name, data) for _, name, data in stream.events()]
    for line in stream.lines:
        assert line in (b"\n",) or line.startswith((b"event: ", b"data: "))
        if line.startswith(b"data: "):
            assert b": " not in line[6:] and b", " not in line[6:]  # compact JSON
    expected = decode_sample_response(
        api.result(
            api.asample(sample_body(sampler, 1, num_samples=2, sampling_params=params)).json()["request_id"]
        ).content
    )
    for index, sequence in enumerate(expected.sequences):
        tokens = [data for name, data in events if name == "token" and data["sequence_index"] == index]
        assert [t["index"] for t in tokens] == list(range(len(sequence.tokens)))
        assert [t["token_id"] for t in tokens] == sequence.tokens
        assert [t["logprob"] for t in tokens] == sequence.logprobs
        assert "".join(t["token"] for t in tokens) == bytes(sequence.tokens).decode("utf-8", "replace")
        done = [data for name, data in events if name == "done" and data["sequence_index"] == index]
        assert done == [{"finish_reason": sequence.stop_reason.value, "total_tokens": len(sequence.tokens),
                         "sequence_index": index}]  # fmt: skip
        last_token = max(
            i for i, (name, data) in enumerate(events) if name == "token" and data["sequence_index"] == index
        )
        assert events.index(("done", done[0])) > last_token


def test_tokens_arrive_as_they_are_generated(fresh_server: Callable[..., LocalServer], streams: Callable) -> None:
    server = fresh_server(token_delay_ms=100)
    api = RawApi(server)
    stream = streams(server, sample_body(api.sampler(), 0, sampling_params={"max_tokens": 6}))
    arrivals = [at for at, name, _ in stream.events() if name == "token"]
    assert len(arrivals) == 6
    assert arrivals[0] < arrivals[-1] - 0.3  # the first token did not wait for the last


def test_idle_stream_gets_keep_alive_comments(fresh_server: Callable[..., LocalServer], streams: Callable) -> None:
    server = fresh_server(token_delay_ms=400, sse_keepalive_s=0.1)
    api = RawApi(server)
    stream = streams(server, sample_body(api.sampler(), 0, sampling_params={"max_tokens": 2}))
    assert len([name for _, name, _ in stream.events()]) == 3
    assert b": keep-alive\n" in stream.lines


def test_client_disconnect_stops_generation(fresh_server: Callable[..., LocalServer], streams: Callable) -> None:
    server = fresh_server(token_delay_ms=50)
    api = RawApi(server)
    sampler = api.sampler()
    body = sample_body(sampler, 0, sampling_params={"max_tokens": 400})
    stream = streams(server, body)
    next(stream.events())
    stream.close()
    _wait_for(lambda: server.stats()["stream_disconnects"] == 1)
    (record,) = server.records(sampler)
    assert record["state"] == "cancelled"
    stats = server.stats()
    assert stats["stream_cancels"] == 1
    assert stats["running"] == 0
    again = streams(server, {**body, "sampling_params": {**body["sampling_params"], "max_tokens": 3}})
    assert [name for _, name, _ in again.events()] == ["token", "token", "token", "done"]
    assert [r["generations"] for r in server.records(sampler)] == [2]  # generated again: the first never finished


def test_stream_of_an_asample_request_replays_it(local_server: LocalServer, api: RawApi, streams: Callable) -> None:
    sampler = api.sampler()
    body = sample_body(sampler, 0)
    result = decode_sample_response(api.result(api.asample(body).json()["request_id"]).content)
    events = [(name, data) for _, name, data in streams(local_server, body).events()]
    assert [data["token_id"] for name, data in events if name == "token"] == result.sequences[0].tokens
    assert [r["generations"] for r in local_server.records(sampler)] == [1]


def test_failed_request_ends_with_an_error_event(fresh_server: Callable[..., LocalServer], streams: Callable) -> None:
    server = fresh_server(token_delay_ms=50)
    api = RawApi(server)
    body = sample_body(api.sampler(), 0, sampling_params={"max_tokens": 400})
    request_id = api.asample(body).json()["request_id"]
    assert api.post("cancel_future", {"request_id": request_id}).status_code == 200
    events = [(name, data) for _, name, data in streams(server, body).events()]  # the same request, replayed
    assert events[-1] == ("error", {"message": "request was cancelled", "category": "user"})
    assert [name for name, _ in events[:-1]] == ["token"] * (len(events) - 1)


def test_errors_before_the_stream_are_http_statuses_never_404(local_server: LocalServer, api: RawApi) -> None:
    sampler = api.sampler()
    unknown = api.post("stream_sample", sample_body(sampler + "-nope", 0))
    assert unknown.status_code == 400 and "sampling_session_id" in unknown.json()["detail"]
    bad = api.post("stream_sample", sample_body(sampler, 0, num_samples=0))
    assert bad.status_code == 400


def test_stream_respects_the_pending_limit(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(token_delay_ms=50, session_pending_limit=1))
    sampler = api.sampler()
    request_id = api.asample(sample_body(sampler, 0, sampling_params={"max_tokens": 200})).json()["request_id"]
    assert api.post("stream_sample", sample_body(sampler, 1)).status_code == 429
    api.post("cancel_future", {"request_id": request_id})


def test_slow_stream_fault(fresh_server: Callable[..., LocalServer], streams: Callable) -> None:
    server = fresh_server(faults="sse_slow_ms=150")
    api = RawApi(server)
    arrivals = [
        at for at, _, _ in streams(server, sample_body(api.sampler(), 0, sampling_params={"max_tokens": 3})).events()
    ]
    assert len(arrivals) == 4 and arrivals[-1] - arrivals[0] >= 0.4


def test_stream_drop_after_truncates_after_the_first_event(
    fresh_server: Callable[..., LocalServer], streams: Callable
) -> None:
    server = fresh_server(faults="stream_sample.drop_after=1")
    api = RawApi(server)
    stream = streams(server, sample_body(api.sampler(), 0, sampling_params={"max_tokens": 5}))
    names = []
    try:
        for _, name, _ in stream.events():
            names.append(name)
    except (http.client.IncompleteRead, ConnectionError):
        pass  # how an aborted chunked body surfaces depends on where the read was
    assert names == ["token"]  # no "done": a truncated stream
    assert server.stats()["faults"] == {"drop_after": 1}
