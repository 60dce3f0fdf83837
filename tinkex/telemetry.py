"""Client telemetry: in-process counters and the session's background event reporter.

:class:`Telemetry` is what ``SamplingClient.get_telemetry()`` returns: counters and latency
percentiles kept in memory, plus listeners called on every event. :class:`TelemetryReporter`
(owned by a ServiceClient) batches session events to ``POST /api/v1/telemetry`` from a
background thread (protocol.md 4.13, 7.9); it never sends the API key or prompt contents.

Example:
    >>> telemetry = Telemetry()
    >>> telemetry.record("submission")
    >>> telemetry.record("completed", latency=0.25)
    >>> snap = telemetry.snapshot()
    >>> snap.submissions, snap.completed, snap.latency_p50
    (1, 1, 0.25)
"""

from __future__ import annotations

import datetime
import enum
import itertools
import logging
import math
import os
import platform
import re
import threading
import uuid
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple

import attrs

from ._clock import SYSTEM_CLOCK, Clock
from ._config import redact_text
from ._policy import is_user_error_status
from .errors import ValidationError

__all__ = ["Telemetry", "TelemetryReporter", "TelemetrySnapshot"]

logger = logging.getLogger(__name__)

Listener = Callable[[str, Mapping[str, Any]], None]

_COUNTED = {
    "submission": "submissions",
    "resubmission": "resubmissions",
    "rate_limited": "rate_limited",
    "try_again": "try_agains",
    "completed": "completed",
    "cancelled": "cancelled",
    "timeout": "timeouts",
}
_KEYED = {"retry": "cause", "failure": "category"}
EVENTS = frozenset(_COUNTED) | frozenset(_KEYED)


@attrs.frozen
class TelemetrySnapshot:
    """The counters of one :class:`Telemetry` at one instant.

    Latency percentiles are in seconds (submit to result) over the last completions kept
    (1000 by default), None before the first one.
    """

    submissions: int
    resubmissions: int
    retries_by_cause: Dict[str, int]
    rate_limited: int
    try_agains: int
    failures_by_category: Dict[str, int]
    completed: int
    cancelled: int
    timeouts: int
    latency_p50: Optional[float]
    latency_p95: Optional[float]
    latency_p99: Optional[float]


def _percentile(ordered: List[float], fraction: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return None
    return ordered[max(math.ceil(fraction * len(ordered)), 1) - 1]


def _key(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    return "unknown" if value is None else str(value)


class Telemetry:
    """Counters and latency percentiles of one SamplingClient, with event listeners.

    Events: ``submission``, ``resubmission``, ``retry`` (field ``cause``), ``rate_limited``,
    ``try_again``, ``failure`` (field ``category``), ``completed`` (field ``latency``, seconds),
    ``cancelled``, ``timeout``. Recording is a counter bump under a lock, no I/O; listeners
    run in the recording thread, outside the lock, and one that raises is logged and ignored.
    Thread-safe: one lock guards every counter.

    Example:
        >>> telemetry = Telemetry()
        >>> telemetry.add_listener(lambda event, fields: print(event, dict(fields)))
        >>> telemetry.record("retry", cause="server")
        retry {'cause': 'server'}
        >>> telemetry.snapshot().retries_by_cause
        {'server': 1}
    """

    def __init__(self, *, latency_window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._counts: Dict[str, int] = dict.fromkeys(_COUNTED.values(), 0)
        self._keyed: Dict[str, Dict[str, int]] = {event: {} for event in _KEYED}
        self._latencies: Deque[float] = deque(maxlen=latency_window)
        self._listeners: Tuple[Listener, ...] = ()

    def record(self, event: str, **fields: Any) -> None:
        """Count one event and tell the listeners.

        Raises:
            ValidationError: ``event`` is not one of the names above (a programming error).
        """
        with self._lock:
            if event in _COUNTED:
                self._counts[_COUNTED[event]] += 1
                latency = fields.get("latency")
                if event == "completed" and latency is not None:
                    self._latencies.append(float(latency))
            elif event in _KEYED:
                counts = self._keyed[event]
                key = _key(fields.get(_KEYED[event]))
                counts[key] = counts.get(key, 0) + 1
            else:
                raise ValidationError(f"unknown telemetry event {event!r}", field="event", value=event)
        listeners = self._listeners  # replaced whole on change, so this read needs no lock
        if listeners:
            self._notify(listeners, event, fields)

    @staticmethod
    def _notify(listeners: Iterable[Listener], event: str, fields: Mapping[str, Any]) -> None:
        for listener in listeners:
            try:
                listener(event, fields)
            except Exception as exc:
                logger.warning("Telemetry listener %r raised on %s: %s", listener, event, exc)

    def snapshot(self) -> TelemetrySnapshot:
        with self._lock:
            counts = dict(self._counts)
            retries = dict(self._keyed["retry"])
            failures = dict(self._keyed["failure"])
            ordered = sorted(self._latencies)
        return TelemetrySnapshot(
            retries_by_cause=retries,
            failures_by_category=failures,
            latency_p50=_percentile(ordered, 0.50),
            latency_p95=_percentile(ordered, 0.95),
            latency_p99=_percentile(ordered, 0.99),
            **counts,
        )

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(event, fields)`` on every recorded event."""
        with self._lock:
            self._listeners = (*self._listeners, fn)

    def remove_listener(self, fn: Listener) -> None:
        """Stop calling ``fn`` (fine when it was never added)."""
        with self._lock:
            self._listeners = tuple(listener for listener in self._listeners if listener != fn)

    def __repr__(self) -> str:
        snap = self.snapshot()
        p50 = "-" if snap.latency_p50 is None else f"{snap.latency_p50:.3g}s"
        return (f"<Telemetry submissions={snap.submissions} completed={snap.completed} "
                f"failed={sum(snap.failures_by_category.values())} cancelled={snap.cancelled} "
                f"retries={sum(snap.retries_by_cause.values())} p50={p50}>")


# --- the session reporter -------------------------------------------------------------------

_SEVERITIES = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
_MAX_TEXT = 1000
_REDACTED = "<redacted>"
_SECRET_PATTERNS = (
    re.compile(r"tml-[A-Za-z0-9_\-]+"),
    re.compile(r"eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]*"),
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
)

_process_uuid = str(uuid.uuid4())


def _renew_process_uuid() -> None:
    global _process_uuid
    _process_uuid = str(uuid.uuid4())


if hasattr(os, "register_at_fork"):  # pragma: no branch - always true on POSIX; false only on Windows
    os.register_at_fork(after_in_child=_renew_process_uuid)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """Remove anything that looks like a credential, and cap the length."""
    for secret in secrets:
        text = redact_text(text, secret)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + _REDACTED, text)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def _scalar(value: Any, secrets: Iterable[str]) -> Any:
    """A JSON scalar safe to send: strings scrubbed, containers replaced by their type name."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return _scrub(str(value), secrets)
    return f"<{type(value).__name__}>"  # a list may hold prompt tokens: never send contents


def is_user_error(exc: BaseException) -> bool:
    """Whether a failure was the caller's: a 4xx other than 408, or a ``user`` category failure.

    Example:
        >>> from tinkex.errors import BadRequestError, RequestFailedError
        >>> is_user_error(BadRequestError("bad", status_code=400)), is_user_error(RequestFailedError("x"))
        (True, False)
    """
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and is_user_error_status(status):
        return True
    return _key(getattr(exc, "category", None)) == "user"


def _utc_timestamp(wall: float) -> str:
    moment = datetime.datetime.fromtimestamp(wall, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class TelemetryReporter:
    """Sends session events in batches to ``POST /api/v1/telemetry`` from a background thread.

    A session's events run from ``SESSION_START`` to the ``SESSION_END`` that :meth:`close`
    queues (with the session's duration) before its last flush. A failed call is reported by
    :meth:`exception`: the caller's own mistake (a 4xx other than 408, or a failure the server
    put in the ``user`` category) as a WARNING ``GENERIC_EVENT`` named ``user_error``, anything
    else as an ERROR ``UNHANDLED_EXCEPTION``.

    Events wait in a bounded queue (excess dropped, with one warning per overflow episode)
    and leave in batches of at most ``batch_size``: every ``flush_interval`` seconds, as soon
    as a batch is full, and at :meth:`close`. The thread starts on the first event, so an
    unused reporter costs nothing; it is a daemon and :meth:`close` stops it. A failing
    ``send`` only drops its batch (WARNING on the first failure in a row, DEBUG after).
    Strings are scrubbed of anything shaped like an API key, and containers are never sent.
    Thread-safe: one Condition guards the queue; ``send`` runs outside it.

    Args:
        send: posts one payload (the HTTP call, with its own timeout and retries).
        session_id: the session (``sessionless-<uuid>`` without one).
        sdk_version: sent with every batch.
        secrets: exact strings (such as the API key) to redact besides the known key shapes.

    Example:
        >>> reporter = TelemetryReporter(print, session_id="s1", sdk_version="0.1.0")
        >>> reporter.session_start()
        >>> reporter.close()  # doctest: +ELLIPSIS
        {'events': [{'event': 'SESSION_START', ...}], 'platform': ..., 'session_id': 's1', ...}
    """

    def __init__(
        self,
        send: Callable[[Dict[str, Any]], None],
        *,
        session_id: str,
        sdk_version: str,
        flush_interval: float = 10.0,
        max_queue: int = 10_000,
        batch_size: int = 100,
        clock: Clock = SYSTEM_CLOCK,
        secrets: Iterable[str] = (),
    ) -> None:
        self._send = send
        self._session_id = session_id
        self._sdk_version = sdk_version
        self._flush_interval = flush_interval
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._clock = clock
        self._secrets = tuple(secret for secret in secrets if secret)
        self._cond = threading.Condition()
        self._queue: Deque[Dict[str, Any]] = deque()
        self._index = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closing = False
        self._drain_deadline = math.inf
        self._overflowing = False
        self._failing = False
        self._flush_requested = False
        self._sending = False
        self._started: Optional[float] = None  # when SESSION_START was queued

    def log_event(self, kind: str, *, severity: str = "INFO", **fields: Any) -> None:
        """Queue one event; never blocks, never raises."""
        try:
            self._enqueue(self._build(kind, severity, fields))
        except Exception as exc:  # telemetry must never break its caller
            logger.debug("Telemetry event %s not recorded: %s", kind, exc)

    def session_start(self) -> None:
        self._started = self._clock.monotonic()
        self.log_event("SESSION_START")

    def session_end(self, duration_s: float) -> None:
        self._started = None  # ended: close() does not end it again
        self.log_event("SESSION_END", duration=str(datetime.timedelta(seconds=duration_s)))

    def generic_event(self, name: str, data: Mapping[str, Any]) -> None:
        """Queue a ``GENERIC_EVENT``; ``data`` values are sent only as scalars."""
        self.log_event("GENERIC_EVENT", event_name=name, event_data=data)

    def exception(self, exc: BaseException) -> None:
        """Report a failed call: a ``user_error`` event for the caller's mistakes, else an
        ``UNHANDLED_EXCEPTION``; type and scrubbed message only (no traceback)."""
        if is_user_error(exc):
            data = {"error_type": type(exc).__name__, "error_message": str(exc),
                    "status_code": getattr(exc, "status_code", None), "category": getattr(exc, "category", None),
                    "request_id": getattr(exc, "request_id", None)}
            self.log_event("GENERIC_EVENT", severity="WARNING", event_name="user_error", event_data=data)
            return
        self.log_event("UNHANDLED_EXCEPTION", severity="ERROR", error_type=type(exc).__name__,
                       error_message=str(exc))

    def _build(self, kind: str, severity: str, fields: Mapping[str, Any]) -> Dict[str, Any]:
        severity = str(severity).upper()
        event: Dict[str, Any] = {
            "event": str(kind),
            "event_id": str(uuid.uuid4()),
            "severity": severity if severity in _SEVERITIES else "INFO",
            "timestamp": _utc_timestamp(self._clock.wall()),
        }
        for name, value in fields.items():
            if isinstance(value, Mapping):
                event[name] = {str(k): _scalar(v, self._secrets) for k, v in value.items()}
            else:
                event[name] = _scalar(value, self._secrets)
        return event

    def _enqueue(self, event: Dict[str, Any]) -> None:
        with self._cond:
            if self._closing:
                return
            if len(self._queue) >= self._max_queue:
                warn, self._overflowing = not self._overflowing, True
            else:
                warn, self._overflowing = False, False
                event["event_session_index"] = next(self._index)
                self._queue.append(event)
                self._start_thread()
                if len(self._queue) >= self._batch_size:
                    self._cond.notify_all()  # flush() callers may wait on the same Condition
        if warn:
            logger.warning("Telemetry queue full (%d), dropping event", self._max_queue)

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tinkex-telemetry", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            batch, done = self._next_batch()
            if batch:
                self._post(batch)
            if done:
                return

    def _next_batch(self) -> Tuple[List[Dict[str, Any]], bool]:
        with self._cond:
            due = self._clock.monotonic() + self._flush_interval
            while not (self._closing or self._flush_requested) and len(self._queue) < self._batch_size:
                left = due - self._clock.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closing and self._clock.monotonic() >= self._drain_deadline:
                self._drop_rest()
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            self._flush_requested = self._flush_requested and bool(self._queue)
            self._sending = bool(batch)
            return batch, self._closing and not self._queue

    def _drop_rest(self) -> None:
        if self._queue:
            logger.warning("Telemetry drain timed out; dropping %d events", len(self._queue))
            self._queue.clear()

    def _post(self, batch: List[Dict[str, Any]]) -> None:
        payload = {
            "events": batch,
            "platform": platform.system(),
            "sdk_version": self._sdk_version,
            "session_id": self._session_id,
            "process_uuid": _process_uuid,
        }
        try:
            self._send(payload)
        except Exception as exc:
            level = logging.DEBUG if self._failing else logging.WARNING
            logger.log(level, "Telemetry batch of %d events dropped: %s", len(batch),
                       _scrub(str(exc), self._secrets))
            self._failing = True
        else:
            self._failing = False
        with self._cond:
            self._sending = False
            self._cond.notify_all()  # wakes flush() callers waiting for the queue to drain

    def flush(self, timeout: float = 5.0) -> bool:
        """Send everything queued now, without waiting for the flush interval.

        Returns:
            True if the queue drained (and its last batch was handed to ``send``) within
            ``timeout`` seconds.
        """
        with self._cond:
            if self._thread is None:
                return not self._queue
            self._flush_requested = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: not self._queue and not self._sending, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Queue ``SESSION_END`` (after a ``SESSION_START``), send what is queued (for at most
        ``timeout`` seconds) and stop the thread; idempotent.

        A ``send`` already running when the time is up finishes on its own (the thread is a
        daemon, so it never holds up interpreter exit); nothing more is sent after it.
        """
        with self._cond:
            started, self._started = self._started, None
        if started is not None:
            self.session_end(self._clock.monotonic() - started)
        with self._cond:
            if not self._closing:
                self._closing = True
                self._drain_deadline = self._clock.monotonic() + timeout
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def __repr__(self) -> str:
        return f"TelemetryReporter(session_id={self._session_id!r}, queued={len(self._queue)})"
