"""Queue-state reporting: the observer protocol, the default debounced logger and the reporter.

While a request waits on the server, poll answers carry a queue state (``paused_rate_limit``,
``paused_capacity``, ...). A :class:`QueueStateReporter` per client forwards each change to an
observer; the default observer, :class:`QueueStateLogger`, writes one WARNING per sampling
session per minute::

    Sampling is paused for <sampling_session_id>. Reason: <reason>

Example:
    >>> class Printer:
    ...     def on_queue_state_change(self, state, metadata):
    ...         print(state.value, metadata["queue_state_reason"])
    >>> reporter = QueueStateReporter(Printer(), {"sampling_session_id": "s1"})
    >>> reporter.report(QueueState.PAUSED_CAPACITY, "busy", "req-1")
    paused_capacity busy
    >>> reporter.report(QueueState.PAUSED_CAPACITY, "busy", "req-1")  # unchanged: not forwarded
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

import cachetools

from .types import QueueState

__all__ = [
    "QueueStateLogger",
    "QueueStateObserver",
    "QueueStateReporter",
    "default_reason",
    "format_pause_message",
]

logger = logging.getLogger(__name__)

_DEFAULT_REASONS: Dict[Tuple[QueueState, str], str] = {
    (QueueState.PAUSED_RATE_LIMIT, "Sampling"): "concurrent sampler weights limit hit",
    (QueueState.PAUSED_RATE_LIMIT, "Training"): "concurrent training clients rate limit hit",
}
_CAPACITY_REASON = "Tinker backend is running short on capacity, please wait"


@runtime_checkable
class QueueStateObserver(Protocol):
    """Anything told about queue-state changes of a client's requests.

    ``metadata`` holds ``request_id``, ``queue_state``, ``queue_state_reason`` and the client's
    ``session_id`` and ``sampling_session_id``. A one-argument ``on_queue_state_change(state)``
    (the official SDK's form) is accepted too.
    """

    def on_queue_state_change(self, state: QueueState, metadata: Mapping[str, Any]) -> None: ...


def default_reason(state: QueueState, action: str = "Sampling") -> str:
    """The reason logged when the server gave none.

    Example:
        >>> default_reason(QueueState.PAUSED_RATE_LIMIT, "Training")
        'concurrent training clients rate limit hit'
    """
    if state is QueueState.PAUSED_CAPACITY:
        return _CAPACITY_REASON
    if state is QueueState.PAUSED_RATE_LIMIT:
        return _DEFAULT_REASONS.get((state, action), _DEFAULT_REASONS[(state, "Sampling")])
    return "unknown"


def format_pause_message(action: str, identifier: str, reason: str) -> str:
    """Example:
    >>> format_pause_message("Sampling", "s1", "unknown")
    'Sampling is paused for s1. Reason: unknown'
    """
    return f"{action} is paused for {identifier}. Reason: {reason}"


def _identifier(metadata: Mapping[str, Any]) -> str:
    for key in ("sampling_session_id", "session_id"):
        value = metadata.get(key)
        if value:
            return str(value)
    return "unknown"


class QueueStateLogger:
    """The default observer: a WARNING per paused identifier, at most once per ``interval``.

    The identifier is the metadata's ``sampling_session_id``, else ``session_id``, else
    ``"unknown"``; it has one debounce slot whatever the state, so a capacity warning is not
    logged within ``interval`` of a rate-limit one. ``active`` is never logged. The slots live
    in a bounded TTL cache, so forgotten identifiers cost nothing for long; each remembers its
    session, so :meth:`clear` takes either id.
    Thread-safe: one lock guards the cache (reads included, as they expire entries).

    Example:
        >>> QueueStateLogger().on_queue_state_change(
        ...     QueueState.PAUSED_CAPACITY, {"sampling_session_id": "s1"})  # logs a warning
    """

    def __init__(
        self,
        *,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        action: str = "Sampling",
        logger: Optional[logging.Logger] = None,
        maxsize: int = 10_000,
    ) -> None:
        self._action = action
        self._logger = logger if logger is not None else logging.getLogger(__name__)
        self._lock = threading.Lock()
        self._last_logged: cachetools.TTLCache[str, str] = cachetools.TTLCache(maxsize, ttl=interval, timer=clock)

    def on_queue_state_change(self, state: QueueState, metadata: Mapping[str, Any]) -> None:
        state = QueueState.parse(state)
        if state is QueueState.ACTIVE:
            return
        identifier = _identifier(metadata)
        if not self._claim_slot(identifier, metadata.get("session_id")):
            return
        reason = metadata.get("queue_state_reason")
        if not isinstance(reason, str) or not reason:
            reason = default_reason(state, self._action)
        self._logger.warning("%s", format_pause_message(self._action, identifier, reason))

    def _claim_slot(self, identifier: str, session_id: object = None) -> bool:
        with self._lock:
            if identifier in self._last_logged:
                return False
            self._last_logged[identifier] = str(session_id) if session_id else identifier
            return True

    def clear(self, identifier: str) -> None:
        """Let the next pause warning for ``identifier`` log at once (fine when none is pending).

        Args:
            identifier: a sampling session id, or a session id, which clears the slot of every
                sampling session of that session.

        Example:
            >>> pauses = QueueStateLogger()
            >>> pauses.on_queue_state_change(QueueState.PAUSED_CAPACITY,
            ...                              {"session_id": "s", "sampling_session_id": "s:sample:0"})
            >>> pauses.clear("s")  # the session's id clears its sampling sessions' slots too
        """
        with self._lock:
            self._last_logged.pop(identifier, None)
            for slot, session_id in list(self._last_logged.items()):
                if session_id == identifier:
                    del self._last_logged[slot]


def _takes_metadata(callback: Callable[..., Any]) -> bool:
    """Whether an ``on_queue_state_change`` accepts (state, metadata) rather than (state)."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = 0
    for param in params:
        if param.kind is param.VAR_POSITIONAL:
            return True
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


class QueueStateReporter:
    """Forwards queue-state changes of a client's requests to one observer.

    A report reaches the observer only when ``(state, reason)`` differs from the previous
    report for the same request id; a request starts out ``(active, None)``, so a request
    that was never paused reports nothing. The observer's arity is decided once, here. An
    observer that raises is logged at ERROR and never disturbs the caller; an observer
    without ``on_queue_state_change`` (or None) is ignored.
    Thread-safe: one lock guards the per-request memory (a bounded LRU); the observer is
    called outside it.

    Args:
        observer: a :class:`QueueStateObserver` (or a one-argument one), or None.
        metadata: merged into what the observer receives (``session_id`` and so on).
        maxsize: requests remembered at once; call :meth:`forget` when one completes.
    """

    def __init__(self, observer: object, metadata: Mapping[str, Any], *, maxsize: int = 10_000) -> None:
        self._observer = observer
        self._metadata = dict(metadata)
        self._callback: Optional[Callable[..., Any]] = getattr(observer, "on_queue_state_change", None)
        self._with_metadata = self._callback is not None and _takes_metadata(self._callback)
        self._lock = threading.Lock()
        self._last: cachetools.LRUCache[str, Tuple[QueueState, Optional[str]]] = cachetools.LRUCache(maxsize)

    def report(self, state: QueueState, reason: Optional[str], request_id: str) -> None:
        """Tell the observer about ``request_id``'s state if it changed; never raises."""
        if self._callback is None:
            return
        state = QueueState.parse(state)
        with self._lock:
            previous = self._last.get(request_id, (QueueState.ACTIVE, None))
            if previous == (state, reason):
                return
            self._last[request_id] = (state, reason)
        self._notify(state, reason, request_id)

    def forget(self, request_id: str) -> None:
        """Drop what is remembered about a finished request."""
        with self._lock:
            self._last.pop(request_id, None)

    def _notify(self, state: QueueState, reason: Optional[str], request_id: str) -> None:
        assert self._callback is not None
        try:
            if self._with_metadata:
                metadata = {**self._metadata, "request_id": request_id, "queue_state": state.value,
                            "queue_state_reason": reason}
                self._callback(state, metadata)
            else:
                self._callback(state)
        except Exception as exc:
            logger.error("QueueStateObserver %s crashed: %s", type(self._observer).__name__, exc,
                         exc_info=logger.isEnabledFor(logging.DEBUG))
