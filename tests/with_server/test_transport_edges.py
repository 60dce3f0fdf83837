"""The transport's rarer paths against a real socket on 127.0.0.1: the retry listener, a closed
transport, malformed headers and cut bodies on the streaming (``requests``) path, and a body
that finishes arriving after the call's deadline on both the direct and the ``requests`` path."""

from __future__ import annotations

from typing import Any, Iterator, List

import pytest

from tests.reliability.hostile_server import HostileServer, drop, json_reply, raw, redirect, reply, then
from tests.support.virtual_clock import VirtualClock
from tinkex import errors
from tinkex._config import Config
from tinkex._http.sse import read_chunks
from tinkex._http.transport import Transport

KEY = "tml-transport-edges-0001"
API = "/api/v1/"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def make(server: HostileServer, time_: VirtualClock, **kwargs: Any) -> Transport:
    config = Config.from_env(api_key=KEY, base_url=server.base_url, environ={})
    return Transport(config, clock=time_.clock(), **kwargs)


def late_body(time_: VirtualClock, body: bytes, *, chunked: bool) -> Any:
    """Headers at once; then the call's (virtual) time runs out before the body is sent."""
    def behave(handler: Any) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        time_.advance(60.0)
        handler.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if chunked else body)
        handler.wfile.flush()
    return behave


def test_the_retry_listener_hears_every_retry_cause(hostile: HostileServer) -> None:
    answers = iter([json_reply({"detail": "busy"}, 503), json_reply({"detail": "slow"}, 429),
                    json_reply({"session_id": "s"})])
    hostile.on(API + "create_session", lambda handler: next(answers)(handler))
    causes: List[str] = []
    time_ = VirtualClock(random=0.0)
    transport = make(hostile, time_, on_retry=causes.append)
    try:
        assert transport.request("POST", "create_session", body={}).json("x") == {"session_id": "s"}
    finally:
        transport.close()
    assert causes == ["503", "429"] and time_.sleeps == [0.5, 1.0]


def test_a_closed_transport_sends_nothing(hostile: HostileServer) -> None:
    transport = make(hostile, VirtualClock())
    transport.close()
    with pytest.raises(errors.APIConnectionError, match="the client is closed"):
        transport.request("POST", "create_session", body={}, max_retries=0)
    with pytest.raises(errors.APIConnectionError, match="the client is closed"):
        transport.open_stream("stream_sample", b"{}", {}, 5.0, None)
    assert hostile.requests == []


def test_a_stream_answered_with_malformed_headers_is_a_decode_error(hostile: HostileServer) -> None:
    hostile.on(API + "stream_sample", raw(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                                          b"X-Note: a\rb\r\nContent-Length: 5\r\n\r\nevent"))
    transport = make(hostile, VirtualClock())
    try:
        with pytest.raises(errors.DecodeError, match="malformed response headers"):
            transport.open_stream("stream_sample", b"{}", {}, 5.0, None)
    finally:
        transport.close()
    assert len(hostile.calls(API + "stream_sample")) == 1


CUT = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"session'


@pytest.mark.parametrize("redirected", [False, True], ids=["direct", "after-a-redirect"])
def test_a_body_cut_short_is_a_connection_error(hostile: HostileServer, redirected: bool) -> None:
    """Direct calls read through urllib3; a redirect is followed on the ``requests`` path: both
    report a body that ends before its Content-Length as a connection error naming the URL."""
    hostile.on(API + "cut", raw(CUT))
    hostile.on(API + "create_session", redirect(hostile.base_url + API + "cut") if redirected else raw(CUT))
    transport = make(hostile, VirtualClock())
    try:
        with pytest.raises(errors.APIConnectionError, match="reading the answer of") as raised:
            transport.request("POST", "create_session", body={}, max_retries=0)
    finally:
        transport.close()
    assert not isinstance(raised.value, errors.APITimeoutError)
    assert (API + "cut" if redirected else API + "create_session") in str(raised.value)


LATE_CASES = pytest.mark.parametrize(
    "chunked, redirected", [(False, False), (True, False), (False, True), (True, True)],
    ids=["direct", "direct-chunked", "after-a-redirect", "after-a-redirect-chunked"])


def late_call(hostile: HostileServer, chunked: bool, redirected: bool) -> BaseException:
    """One call whose answer's body arrives after the call's deadline; returns what it raised."""
    time_ = VirtualClock()
    hostile.on(API + "late", late_body(time_, b'{"session_id": "s"}', chunked=chunked))
    hostile.on(API + "create_session", redirect(hostile.base_url + API + "late") if redirected
               else late_body(time_, b'{"session_id": "s"}', chunked=chunked))
    transport = make(hostile, time_)
    try:
        with pytest.raises(errors.APITimeoutError) as raised:
            transport.request("POST", "create_session", body={}, deadline=time_.now + 30.0)
    finally:
        transport.close()
    return raised.value


@LATE_CASES
def test_a_body_finished_after_the_deadline_is_a_timeout_and_not_resent(
        hostile: HostileServer, chunked: bool, redirected: bool) -> None:
    late_call(hostile, chunked, redirected)
    # A redirect answer on the direct path hands the call to the requests path, which sends it
    # again and follows the redirect; the late answer itself is never asked for twice.
    expected = ["create_session", "create_session", "late"] if redirected else ["create_session"]
    assert [r.path[len(API):] for r in hostile.requests] == expected


@LATE_CASES
def test_a_body_finished_after_the_deadline_is_reported_as_such_without_a_retry_warning(
        hostile: HostileServer, chunked: bool, redirected: bool, caplog: pytest.LogCaptureFixture) -> None:
    error = late_call(hostile, chunked, redirected)
    assert "ran past the deadline" in str(error)
    assert "retrying" not in caplog.text


def test_a_configured_proxy_gets_every_call_with_its_absolute_url(hostile: HostileServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy the direct urllib3 path is off: calls go through requests, to the proxy."""
    monkeypatch.setenv("HTTP_PROXY", hostile.base_url)
    monkeypatch.delenv("NO_PROXY")
    hostile.on("http://tinker.invalid/api/v1/create_session", json_reply({"session_id": "via-proxy"}))
    config = Config.from_env(api_key=KEY, base_url="http://tinker.invalid", environ={})
    transport = Transport(config, clock=VirtualClock().clock())
    try:
        answer = transport.request("POST", "create_session", body={}, max_retries=0)
    finally:
        transport.close()
    assert answer.json("x") == {"session_id": "via-proxy"}
    (sent,) = hostile.requests
    assert sent.path == "http://tinker.invalid/api/v1/create_session" and sent.headers["X-API-Key"] == KEY


# -- the stream_sample response (tinkex._http.sse) ---------------------------------------------


def test_an_error_answer_to_a_stream_whose_body_is_cut_is_a_connection_error(hostile: HostileServer) -> None:
    hostile.on(API + "stream_sample", raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                          b"Content-Length: 1000\r\n\r\n{\"detail\": \"bu"))
    transport = make(hostile, VirtualClock())
    try:
        with pytest.raises(errors.APIConnectionError, match="reading the answer of") as raised:
            transport.open_stream("stream_sample", b"{}", {}, 5.0, None)
    finally:
        transport.close()
    assert not isinstance(raised.value, errors.APIStatusError)


class Urllib3V1Body:
    """The body API of urllib3 1.26 (no ``read1``), over a real urllib3 2 response: what
    ``read_chunks`` falls back to when an older urllib3 is installed."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.chunked = real.chunked
        self.connection = real.connection

    def supports_chunked_reads(self) -> bool:
        return bool(self._real.supports_chunked_reads())

    def read_chunked(self, amt: Any = None, decode_content: Any = None) -> Iterator[bytes]:
        return self._real.read_chunked(amt, decode_content=decode_content)  # type: ignore[no-any-return]

    def stream(self, amt: int, decode_content: Any = None) -> Iterator[bytes]:
        return self._real.stream(amt, decode_content=decode_content)  # type: ignore[no-any-return]


EVENTS = [b'event: token\ndata: {"index": 0, "token_id": 72}\n\n', b'event: done\ndata: {"total_tokens": 1}\n\n']


def chunked_events(handler: Any) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for event in EVENTS:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_reading_a_stream_with_the_urllib3_1_body_api(hostile: HostileServer, chunked: bool) -> None:
    """urllib3 1.26 has no ``read1``: a chunked body is read one HTTP chunk per read, any other
    body in reads of ``read_size`` bytes."""
    body = b"".join(EVENTS)
    hostile.on(API + "stream_sample", chunked_events if chunked else
               reply(200, body, content_type="text/event-stream"))
    time_ = VirtualClock()
    transport = make(hostile, time_)
    try:
        stream = transport.open_stream("stream_sample", b"{}", {}, 5.0, None)
        real = stream._raw
        old = type("Old", (), {"raw": Urllib3V1Body(real.raw), "url": real.url})()
        pieces = list(read_chunks(old, clock=time_.clock(), idle_timeout=5.0, deadline=time_.now + 30.0,
                                  read_size=16))
        stream.close()
    finally:
        transport.close()
    assert b"".join(pieces) == body
    if chunked:
        assert pieces == EVENTS
    else:
        assert all(len(piece) == 16 for piece in pieces[:-1]) and len(pieces) == -(-len(body) // 16)


@pytest.mark.parametrize("answer", [raw(b"garbage that is no status line\r\n\r\n"), drop()],
                         ids=["bad-status-line", "closed-without-answer"])
def test_failed_direct_sends_give_their_connections_back(hostile: HostileServer, answer: Any,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """More failed sends than the pool holds: each is a typed connection error, each closes its
    connection and frees its place, so later calls still get one (no "pool is full" warning)."""
    failures = then(answer, 5, json_reply({"session_id": "s"}))
    hostile.on(API + "create_session", failures)
    transport = make(hostile, VirtualClock(), pool_size=2)
    try:
        for _ in range(5):
            with pytest.raises(errors.APIConnectionError, match="without an answer|reset by the server"):
                transport.request("POST", "create_session", body={}, max_retries=0)
        assert transport.request("POST", "create_session", body={}, max_retries=0).json("x") == {"session_id": "s"}
    finally:
        transport.close()
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
