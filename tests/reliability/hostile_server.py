"""A Tinker peer that misbehaves on purpose: stalls, trickles, floods and lies.

The handshake routes answer like a well-behaved Tinker by default; a test sets a
*behaviour* per path (``server.on("/api/v1/asample", stall())``). A behaviour is a function
of the request handler that writes whatever it likes to the socket, so it can send broken
HTTP as easily as a valid answer. Every request is recorded with its headers.

Behaviours stop at ``stop()``: a stalled handler waits on the server's stop event, never on
a bare sleep, so no thread outlives the server for long.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from tests.scripted_server import LoopbackServer, Recorded
from tinkex._wire.proto import encode_sample_response
from tinkex.types import SampledSequence, SampleResponse, StopReason

__all__ = ["HostileServer", "SilentListener", "Recorded", "reply", "json_reply", "stall", "trickle", "flood",
           "raw", "redirect", "drop", "then", "sse", "unused_port", "RESULT_TOKENS", "SESSION", "SSID", "ASAMPLE_PATH"]

SESSION = "sess-hostile"
SSID = f"{SESSION}:sample:0"
ASAMPLE_PATH = "/api/v1/asample"
RESULT_TOKENS = [7, 8, 9]
MIB = 1024 * 1024

Behaviour = Callable[["_Handler"], None]


def reply(status: int = 200, body: bytes = b"{}", content_type: str = "application/json",
          headers: Iterable[Tuple[str, str]] = ()) -> Behaviour:
    """A complete answer with a correct Content-Length."""
    def behave(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return behave


def json_reply(value: Any, status: int = 200) -> Behaviour:
    return reply(status, json.dumps(value).encode())


def result_body(tokens: Optional[List[int]] = None) -> bytes:
    tokens = RESULT_TOKENS if tokens is None else tokens
    return encode_sample_response(SampleResponse(sequences=[
        SampledSequence(tokens=tokens, logprobs=[-0.5] * len(tokens), stop_reason=StopReason.LENGTH)]))


def stall() -> Behaviour:
    """Read the request, then never answer (until the server stops)."""
    def behave(handler: _Handler) -> None:
        handler.server_stop.wait()
        handler.close_connection = True
    return behave


def trickle(data: bytes, interval: float = 1.0, *, whole_response: bool = True) -> Behaviour:
    """Send ``data`` one byte every ``interval`` seconds: the whole HTTP answer (status line
    first) when ``whole_response``, else proper headers then a trickled body."""
    def behave(handler: _Handler) -> None:
        if not whole_response:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.flush()
        handler.close_connection = True
        for index in range(len(data)):
            try:
                handler.wfile.write(data[index:index + 1])
                handler.wfile.flush()
            except OSError:
                return
            if handler.server_stop.wait(interval):
                return
    return behave


def flood(total: int, content_type: str = "application/json", *, declare_length: bool = True,
          status: int = 200, filler: bytes = b"[") -> Behaviour:
    """An answer of ``total`` bytes of ``filler``, written 1 MiB at a time (never held whole),
    with or without a Content-Length (without: the body ends when the connection closes)."""
    chunk = filler * (MIB // len(filler))

    def behave(handler: _Handler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        if declare_length:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        handler.close_connection = True
        sent = 0
        try:
            while sent < total:
                piece = chunk[: total - sent]
                handler.wfile.write(piece)
                sent += len(piece)
        except OSError:
            pass  # the client hung up: exactly what a capped reader should do
    return behave


def raw(data: bytes) -> Behaviour:
    """Write ``data`` verbatim (anything, even broken HTTP), then close."""
    def behave(handler: _Handler) -> None:
        handler.close_connection = True
        handler.wfile.write(data)
    return behave


def drop() -> Behaviour:
    """Read the request, then close the connection without a byte of answer."""
    def behave(handler: _Handler) -> None:
        handler.close_connection = True
    return behave


def then(first: Behaviour, times: int, after: Behaviour) -> Behaviour:
    """``first`` for the first ``times`` requests, ``after`` for every later one."""
    lock, served = threading.Lock(), [0]

    def behave(handler: _Handler) -> None:
        with lock:
            served[0] += 1
            count = served[0]
        (first if count <= times else after)(handler)
    return behave


def redirect(location: str, status: int = 307) -> Behaviour:
    return reply(status, b"", headers=(("Location", location),))


def sse(text: bytes) -> Behaviour:
    return reply(200, text, content_type="text/event-stream")


def _promise(handler: _Handler) -> None:
    json_reply({"request_id": "req-1", "model_id": "m", "sample_sequence_ids": ["req-1:seq:0"]})(handler)


def _defaults() -> Dict[str, Behaviour]:
    api = "/api/v1/"
    return {
        api + "client/config": json_reply({}),
        api + "client/dynamic_config": json_reply({}),
        api + "create_session": json_reply({"session_id": SESSION}),
        api + "create_sampling_session": json_reply({"sampling_session_id": SSID}),
        api + f"samplers/{SSID}": json_reply({"sampler_id": SSID, "base_model": "m"}),
        api + "session_heartbeat": json_reply({}),
        api + f"sessions/{SESSION}/finish": json_reply({}),
        api + "telemetry": json_reply({"status": "accepted"}),
        api + "cancel_future": json_reply({}),
        api + "asample": _promise,
        api + "retrieve_future": reply(200, result_body(), content_type="application/x-protobuf"),
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_stop: threading.Event
    owner: HostileServer
    request_body: bytes = b""

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.request_body = body  # what this request sent, for behaviours that answer by content
        path = self.path.split("?", 1)[0]
        self.owner._record(Recorded(self.command, path, dict(self.headers.items()), body))
        behaviour = self.owner.behaviour(path)
        try:
            behaviour(self)
        except OSError:
            self.close_connection = True

    do_GET = do_POST = _serve


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up or refusing our certificate is the point of these tests


class HostileServer(LoopbackServer):
    """The misbehaving peer on ``host`` (any 127.0.0.0/8 address), a free port.

    Thread-safety: ``on``, ``requests`` and ``calls`` may be used from any thread (one lock).

    Example:
        >>> with HostileServer() as server:  # doctest: +SKIP
        ...     server.on("/api/v1/asample", stall())
    """

    def __init__(self, host: str = "127.0.0.1", tls: Optional[Tuple[str, str]] = None) -> None:
        stop = threading.Event()
        handler = type("Handler", (_Handler,), {"server_stop": stop, "owner": self})
        super().__init__(_QuietServer((host, 0), handler), "hostile-server")
        self._stop = stop
        self._behaviours = _defaults()
        if tls is not None:  # (certificate file, key file): serve https with that certificate
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"

    def on(self, path: str, behaviour: Behaviour) -> None:
        with self._lock:
            self._behaviours[path] = behaviour

    def behaviour(self, path: str) -> Behaviour:
        with self._lock:
            return self._behaviours.get(path, json_reply({"detail": f"no route {path}"}, 404))


class SilentListener:
    """A socket that listens and never accepts: the kernel completes connections, nobody answers."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SilentListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
