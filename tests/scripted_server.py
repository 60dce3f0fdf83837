"""A small scripted HTTP server on 127.0.0.1 for transport-level tests.

Each test queues answers per path; the server records every request it receives. It is a
test peer for behaviour the local Tinker server never shows on purpose (redirects to other
hosts, odd status codes, hostile bodies).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, TypeVar, Union

import attrs


@attrs.frozen
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: Tuple[Tuple[str, str], ...] = (("Content-Type", "application/json"),)
    delay: float = 0.0
    drop: bool = False


@attrs.frozen
class Recorded:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes


Script = Union[Answer, Callable[[Recorded], Answer]]
T = TypeVar("T", bound="LoopbackServer")


class LoopbackServer:
    """What every threaded test server here shares: its thread, lifecycle and request log.

    Thread-safety: the request log is guarded by ``_lock``, which subclasses also use for their
    own scripts.
    """

    scheme = "http"

    def __init__(self, server: ThreadingHTTPServer, name: str) -> None:
        self._lock = threading.Lock()
        self.requests: List[Recorded] = []
        self._stop = threading.Event()
        self._server = server
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True, name=name)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host}:{port}"

    def start(self: T) -> T:
        self._thread.start()  # type: ignore[attr-defined]
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self: T) -> T:
        return self.start()  # type: ignore[attr-defined, no-any-return]

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def calls(self, path: str) -> List[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


class _HangUpTolerantServer(ThreadingHTTPServer):
    """Prints a handler's error, unless it is the test's client hanging up mid-answer on purpose
    (a close, a cancel or a deadline cutting the call is what many tests do)."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class ScriptedServer(LoopbackServer):
    """Serves queued answers; an unscripted path answers 404. Thread-safe: one lock guards the script."""

    def __init__(self) -> None:
        super().__init__(_HangUpTolerantServer(("127.0.0.1", 0), self._handler_class()), "scripted-server")
        self._script: Dict[str, Deque[Script]] = collections.defaultdict(collections.deque)
        self._default: Dict[str, Script] = {}

    def queue(self, path: str, *answers: Script) -> None:
        with self._lock:
            self._script[path].extend(answers)

    def always(self, path: str, answer: Script) -> None:
        with self._lock:
            self._default[path] = answer

    def _next(self, recorded: Recorded) -> Optional[Answer]:
        self._record(recorded)
        with self._lock:
            queued = self._script.get(recorded.path)
            script = queued.popleft() if queued else self._default.get(recorded.path)
        if script is None:
            return None
        return script(recorded) if callable(script) else script

    def _handler_class(self) -> type:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(self.command, self.path, dict(self.headers.items()), body)
                answer = owner._next(recorded) or Answer(status=404, body=b'{"detail":"not scripted"}')
                if answer.delay:
                    time.sleep(answer.delay)
                if answer.drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = _serve

        return Handler
