"""Server-sent events for ``stream_sample`` (protocol.md 9.2): bytes in, typed chunks out.

Three layers, each usable alone:

* :func:`read_chunks` reads a streaming ``requests`` response as bytes arrive (one socket read
  at a time, never the whole body), under a wall-clock deadline and an idle read timeout.
* :func:`iter_events` parses those bytes into :class:`ServerEvent` values with ``sseclient-py``.
* :func:`decode_chunk` turns one event into a :class:`~tinkex.types.SampleStreamChunk`.

Why ``sseclient-py`` gets its input pre-processed (checked against sseclient-py 1.9.0):

* It finds the end of an event by looking for ``\\n\\n``, ``\\r\\r`` or ``\\r\\n\\r\\n`` at the end
  of what it has buffered, so a blank line written with *mixed* endings (``\\n`` then ``\\r\\n``,
  or ``\\r\\n`` then ``\\r``) is missed and two events merge into one. Every ``\\r\\n`` and lone
  ``\\r`` is rewritten to ``\\n`` here first, with a ``\\r\\n`` split across two reads handled.
* It would iterate a ``requests`` response with ``iter_content(128)``, which on a body without
  chunked encoding waits for 128 bytes; it is fed :func:`read_chunks` instead.
* It keeps buffering a line that never ends; here an event larger than ``max_event_bytes`` is a
  :class:`~tinkex.errors.DecodeError`.
* It does not strip a leading byte-order mark (the SSE standard does); here it is stripped.
* It dispatches an event left unterminated at the end of the body (the standard discards it).
  tinkex keeps that leniency (a server that omits the last blank line still works) but marks
  such an event ``complete=False``, so a half-written last event is reported as a truncated
  stream rather than as bad JSON.

Everything else is sseclient-py's own behaviour and matches 9.2: comment lines are ignored,
multi-line ``data:`` is joined with ``\\n``, one space after the colon is stripped, ``id:`` and
``retry:`` are kept on the event and ignored by tinkex, events without data are not dispatched.

Example:
    >>> events = list(iter_events([b'event: token\\r\\ndata: {"index":0,"token_id":72}\\r', b'\\n\\r\\n']))
    >>> decode_chunk(events[0]).token_id
    72
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

import attrs
import requests
import sseclient

from .._clock import Clock
from .._wire import codec as _codec
from ..errors import APIConnectionError, APITimeoutError, DecodeError
from ..types import RequestErrorCategory, SampleStreamChunk, StopReason, StreamChunkKind
from .errors import LIBRARY_ERRORS, describe, is_timeout, library_error
from .watchdog import shutdown_connection

__all__ = ["EventStream", "ServerEvent", "read_chunks", "iter_events", "decode_chunk", "MAX_EVENT_BYTES", "READ_SIZE"]

logger = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
MAX_EVENT_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@attrs.frozen
class ServerEvent:
    """One dispatched SSE event.

    Attributes:
        name: the ``event:`` field (``"message"`` when absent).
        data: the ``data:`` lines joined with ``\\n``.
        complete: False for an event the body ended in the middle of (no closing blank line).
    """

    name: str
    data: str
    complete: bool = True


ERROR_BODY_LIMIT = 64 * 1024


class EventStream:
    """An open ``text/event-stream`` answer (or the error answer in its place), as layers above see it.

    ``status``, ``headers``, ``url`` and ``content`` (the error body for a non-200, else
    empty) mirror :class:`~tinkex._http.Response`, so the submit loop treats both alike.

    Thread-safety: read events from one thread; ``abort()`` may be called from another to
    unblock a read.
    """

    def __init__(self, raw: requests.Response) -> None:
        self._raw = raw
        self.status = raw.status_code
        self.headers = raw.headers
        self.url = raw.url
        self.request_id = raw.headers.get("x-request-id")
        self.content = b"" if self.status == 200 else self._error_body()

    def _error_body(self) -> bytes:
        try:
            return bytes(self._raw.raw.read(ERROR_BODY_LIMIT, decode_content=True) or b"")
        except LIBRARY_ERRORS as exc:
            raise library_error("reading the answer of", self.url, exc) from None
        finally:
            self._raw.close()

    def json(self, what: str) -> Any:
        return _codec.loads(self.content, what=what)

    @property
    def content_type(self) -> str:
        return str(self.headers.get("content-type", ""))

    def check_event_stream(self) -> None:
        """Raise DecodeError (and close) unless the answer is ``text/event-stream``."""
        if self.content_type.split(";")[0].strip().lower() != "text/event-stream":
            self.close()
            raise DecodeError(f"{self.url} answered 200 with Content-Type {self.content_type!r}, not "
                              "text/event-stream")

    def events(self, *, clock: Clock, idle_timeout: float, deadline: Optional[float]) -> Iterator[ServerEvent]:
        """The events of the body as they arrive (see :func:`read_chunks` and :func:`iter_events`)."""
        return iter_events(read_chunks(self._raw, clock=clock, idle_timeout=idle_timeout, deadline=deadline))

    def abort(self) -> None:
        """Shut the connection down: unblocks a read in another thread; the connection is not reused."""
        raw = self._raw.raw
        shutdown_connection(getattr(raw, "connection", None) or getattr(raw, "_connection", None))

    def close(self) -> None:
        self._raw.close()


# -- reading ----------------------------------------------------------------------------------


def _socket_of(body: Any) -> Any:
    connection = getattr(body, "connection", None) or getattr(body, "_connection", None)
    return getattr(connection, "sock", None)


def _reader(body: Any, read_size: int) -> Callable[[], bytes]:
    """One call = at most one socket read, returning b"" at the end of the body."""
    read1 = getattr(body, "read1", None)
    if read1 is not None:  # urllib3 >= 2: returns whatever one read brings, chunked or not
        return lambda: read1(read_size, decode_content=True) or b""
    if getattr(body, "chunked", False) and body.supports_chunked_reads():
        chunks = body.read_chunked(None, decode_content=True)  # urllib3 1.26: one HTTP chunk per call
    else:  # urllib3 1.26 without chunked encoding: blocks until read_size bytes (documented limit)
        chunks = body.stream(read_size, decode_content=True)
    return lambda: next(chunks, b"")


def read_chunks(
    response: requests.Response,
    *,
    clock: Clock,
    idle_timeout: float,
    deadline: Optional[float] = None,
    read_size: int = READ_SIZE,
) -> Iterator[bytes]:
    """Yield the body of a ``stream=True`` response as it arrives.

    Before each read the socket timeout is set to the smaller of ``idle_timeout`` and the
    time left before ``deadline``, so a stream kept alive by comments still ends at the
    deadline. Every failure is a tinkex error.

    Args:
        response: an open ``requests`` response made with ``stream=True``.
        clock: supplies ``monotonic()`` for the deadline.
        idle_timeout: the most seconds to wait for the next bytes.
        deadline: a ``clock.monotonic()`` instant after which reading stops.
        read_size: the most bytes one read returns.

    Raises:
        APITimeoutError: the deadline passed or no bytes came for ``idle_timeout`` seconds.
        APIConnectionError: the connection broke (including a chunked body cut short).
    """
    body = response.raw
    read = _reader(body, read_size)
    sock = _socket_of(body) if deadline is not None else None
    url = response.url
    while True:
        wait = _next_wait(clock, idle_timeout, deadline, url)
        if sock is not None:
            sock.settimeout(wait)
        try:
            data = read()
        except LIBRARY_ERRORS as exc:
            raise _read_error(exc, url, clock, idle_timeout, deadline) from None
        if not data:
            return
        yield data


def _next_wait(clock: Clock, idle_timeout: float, deadline: Optional[float], url: str) -> float:
    if deadline is None:
        return idle_timeout
    left = deadline - clock.monotonic()
    if left <= 0:
        raise APITimeoutError(f"the stream from {url} ran past its deadline", url=url)
    return min(idle_timeout, left)


def _read_error(
    exc: BaseException, url: str, clock: Clock, idle_timeout: float, deadline: Optional[float]
) -> APIConnectionError:
    if not is_timeout(exc):
        return APIConnectionError(f"the stream from {url} broke: {describe(exc)}", url=url)
    if deadline is not None and clock.monotonic() >= deadline - 0.01:
        return APITimeoutError(f"the stream from {url} ran past its deadline", url=url)
    return APITimeoutError(f"the stream from {url} sent nothing for {idle_timeout:g}s (idle read timeout)", url=url)


# -- parsing ----------------------------------------------------------------------------------


class _NormalisedLines:
    """The byte chunks with every line ending turned into ``\\n``, a leading BOM removed and
    event size capped; remembers whether the body ended inside an event.

    Not thread-safe: one reader.
    """

    def __init__(self, chunks: Iterable[bytes], max_event_bytes: int) -> None:
        self._chunks = chunks
        self._max_event_bytes = max_event_bytes
        self._after_cr = False  # the last chunk ended in \r: a \n opening the next one belongs to it
        self._last = b"\n"  # last byte given out, so a blank line split across chunks is seen
        self._event_bytes = 0  # bytes since the last blank line
        self.finished = False

    @property
    def ended_inside_event(self) -> bool:
        return self.finished and self._event_bytes > 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._without_bom(self._chunks):
            chunk = self._normalise(chunk)
            if chunk:
                self._measure(chunk)
                yield chunk
        self.finished = True

    @staticmethod
    def _without_bom(chunks: Iterable[bytes]) -> Iterator[bytes]:
        head = b""
        iterator = iter(chunks)
        for chunk in iterator:  # gather 3 bytes: a BOM may arrive split across reads
            head += chunk
            if len(head) >= len(_BOM) or not _BOM.startswith(head):
                break
        yield head[len(_BOM):] if head.startswith(_BOM) else head
        yield from iterator

    def _normalise(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return chunk

    def _measure(self, chunk: bytes) -> None:
        joined = self._last + chunk
        blank = joined.rfind(b"\n\n")
        self._event_bytes = len(joined) - blank - 2 if blank >= 0 else self._event_bytes + len(chunk)
        self._last = chunk[-1:]
        if self._event_bytes > self._max_event_bytes:
            raise DecodeError(f"an SSE event exceeded {self._max_event_bytes} bytes")


def iter_events(chunks: Iterable[bytes], *, max_event_bytes: int = MAX_EVENT_BYTES) -> Iterator[ServerEvent]:
    """Parse SSE events from byte chunks split anywhere (even inside a line ending).

    Raises:
        DecodeError: text that is not UTF-8, or an event over ``max_event_bytes``.

    Example:
        >>> [e.data for e in iter_events([b": keep-alive\\n\\ndata: a\\nda", b"ta: b\\n\\n"])]
        ['a\\nb']
    """
    source = _NormalisedLines(chunks, max_event_bytes)
    events = sseclient.SSEClient(iter(source)).events()
    while True:
        try:
            event = next(events)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            raise DecodeError(f"stream_sample sent text that is not UTF-8 ({exc.reason})") from None
        yield ServerEvent(name=event.event, data=event.data, complete=not source.ended_inside_event)


# -- decoding ---------------------------------------------------------------------------------


def _field(data: Any, name: str, kinds: Tuple[type, ...], what: str, required: bool) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise DecodeError(f"{what}: missing required field {name!r}")
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise DecodeError(f"{what}: field {name!r} has the wrong type ({type(value).__name__}): {value!r}")
    return value


def _sequence_index(data: Any, what: str) -> int:
    index = _field(data, "sequence_index", (int,), what, False)
    if index is None:
        return 0
    if index < 0:
        raise DecodeError(f"{what}: sequence_index must be >= 0, got {index}")
    return int(index)


def _token(data: Any) -> SampleStreamChunk:
    what = "stream_sample token event"
    logprob = _field(data, "logprob", (int, float), what, False)
    return SampleStreamChunk(
        kind=StreamChunkKind.TOKEN,
        sequence_index=_sequence_index(data, what),
        index=_field(data, "index", (int,), what, True),
        token_id=_field(data, "token_id", (int,), what, True),
        token=_field(data, "token", (str,), what, False),
        logprob=None if logprob is None else float(logprob),
    )


def _done(data: Any) -> SampleStreamChunk:
    what = "stream_sample done event"
    reason = _field(data, "finish_reason", (str,), what, True)
    try:
        finish_reason = StopReason(reason)
    except ValueError:
        raise DecodeError(f"{what}: unknown finish_reason {reason!r}") from None
    return SampleStreamChunk(
        kind=StreamChunkKind.DONE,
        sequence_index=_sequence_index(data, what),
        finish_reason=finish_reason,
        total_tokens=_field(data, "total_tokens", (int,), what, True),
    )


def _error(data: Any) -> SampleStreamChunk:
    message = data.get("message")
    return SampleStreamChunk(
        kind=StreamChunkKind.ERROR,
        message=message if isinstance(message, str) else "the request failed",
        category=RequestErrorCategory.parse(data.get("category")),
    )


_DECODERS = {"token": _token, "done": _done, "error": _error}


def decode_chunk(event: ServerEvent) -> Optional[SampleStreamChunk]:
    """The chunk an event carries; None for event names 9.2 does not define (ignored).

    The kind comes from the event name, never from the payload; a missing
    ``sequence_index`` is 0.

    Raises:
        DecodeError: ``data`` that is not a JSON object, or a required field missing or mistyped.

    Example:
        >>> decode_chunk(ServerEvent("done", '{"finish_reason":"stop","total_tokens":3}')).sequence_index
        0
        >>> decode_chunk(ServerEvent("ping", "{}")) is None
        True
    """
    decode = _DECODERS.get(event.name)
    if decode is None:
        logger.debug("Ignoring an SSE event named %r", event.name)
        return None
    data = _codec.loads(event.data, what=f"stream_sample {event.name} event")
    if not isinstance(data, dict):
        raise DecodeError(f"stream_sample {event.name} event: expected a JSON object, got {type(data).__name__}")
    return decode(data)
