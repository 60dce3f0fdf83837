"""An in-memory transport: the seam unit tests drive the retry, submit and poll loops through.

:class:`FakeTransport` is a real :class:`~tinkex._http.transport.Transport` (same HTTP-layer
retries, headers, error mapping and deadlines) whose one network step, sending a request and
reading its answer, is replaced by a script. Nothing opens a socket. Pair it with a virtual
clock (``Clock(sleeper=...)``) and a test of a five-minute retry schedule runs in milliseconds.

Example:
    >>> fake = FakeTransport()
    >>> fake.on("asample", (503, b""), {"request_id": "r1"})
    >>> fake.request("POST", "asample", body={"seq_id": 0}, check=False).status
    503
    >>> fake.request("POST", "asample", body={"seq_id": 0}).json("promise")
    {'request_id': 'r1'}
    >>> [call.body["seq_id"] for call in fake.calls]
    [0, 0]
"""

from __future__ import annotations

import collections
import io
import json
import threading
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple, Union

import attrs
import requests
import urllib3
from requests.structures import CaseInsensitiveDict

from .._clock import SYSTEM_CLOCK, Clock
from .._config import Config
from .._wire import codec
from ..errors import APIConnectionError
from .sse import EventStream
from .transport import Response, Transport

__all__ = ["FakeCall", "FakeTransport", "Scripted"]


@attrs.frozen
class FakeCall:
    """One request the fake received."""

    method: str
    path: str
    body: Any
    headers: Mapping[str, str]
    at: float


#: An answer in a script: a dict or list (a 200 JSON answer), ``(status, body)`` or
#: ``(status, body, headers)`` with a bytes/dict body, an exception to raise (a connection
#: failure), or a callable taking the :class:`FakeCall` and returning one of those.
Scripted = Union[Mapping[str, Any], List[Any], Tuple[Any, ...], BaseException, Callable[[FakeCall], Any]]


class FakeTransport(Transport):
    """A transport answering from per-path scripts, in order; the last answer of a path repeats.

    Thread-safety: safe to call from several threads; one lock guards the scripts and the log.
    """

    def __init__(self, config: Optional[Config] = None, *, clock: Clock = SYSTEM_CLOCK,
                 stop_event: Optional[threading.Event] = None) -> None:
        super().__init__(config or Config.from_env(api_key="tml-fake-key", base_url="http://fake.invalid"),
                         clock=clock, stop_event=stop_event)
        self._scripts: Dict[str, Deque[Scripted]] = {}
        self._lock = threading.Lock()  # guards _scripts and calls
        self.calls: List[FakeCall] = []

    def on(self, path: str, *answers: Scripted) -> None:
        """Queue ``answers`` for ``path`` (after any still queued)."""
        with self._lock:
            self._scripts.setdefault(path, collections.deque()).extend(answers)

    def calls_to(self, path: str) -> List[FakeCall]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def _next(self, method: str, path: str, payload: Optional[bytes], headers: Mapping[str, str]) -> Any:
        call = FakeCall(method=method, path=path, body=json.loads(payload) if payload else None,
                        headers=dict(headers), at=self.clock.monotonic())
        with self._lock:
            self.calls.append(call)
            script = self._scripts.get(path)
            if not script:
                raise AssertionError(f"FakeTransport: no answer scripted for {method} {path}")
            answer = script.popleft() if len(script) > 1 else script[0]
        return answer(call) if callable(answer) else answer

    def _send_once(self, method: str, path: str, payload: Optional[bytes], headers: Dict[str, str],
                   read_timeout: Optional[float], deadline: Optional[float]) -> Response:
        if self._closed:
            raise APIConnectionError("the client is closed", url=self.url(path))
        self._timeouts(read_timeout, deadline)  # a deadline already past fails as the real one does
        answer = self._next(method, path, payload, headers)
        if isinstance(answer, BaseException):
            raise answer
        status, content, extra = _unpack(answer)
        return Response(status=status, headers=CaseInsensitiveDict(extra), content=content, url=self.url(path))

    def open_stream(self, path: str, payload: bytes, headers: Mapping[str, str], read_timeout: float,
                    deadline: Optional[float]) -> EventStream:
        """A scripted answer as an open stream: a 200's body is read as server-sent events."""
        if self._closed:
            raise APIConnectionError("the client is closed", url=self.url(path))
        answer = self._next("POST", path, payload, self._call_headers("POST", payload, headers, read_timeout))
        if isinstance(answer, BaseException):
            raise answer
        status, content, extra = _unpack(answer)
        raw = requests.Response()
        raw.status_code, raw.url = status, self.url(path)
        raw.headers = CaseInsensitiveDict(extra)
        raw.raw = urllib3.HTTPResponse(body=io.BytesIO(content), headers=extra, status=status,
                                       preload_content=False)
        return EventStream(raw)


def _unpack(answer: Any) -> Tuple[int, bytes, Dict[str, str]]:
    if isinstance(answer, (dict, list)):
        return 200, codec.dumps(answer), {"content-type": "application/json"}
    status, body, *rest = answer
    headers = dict(rest[0]) if rest else {}
    if isinstance(body, (dict, list)):
        headers.setdefault("content-type", "application/json")
        body = codec.dumps(body)
    return int(status), bytes(body), headers
