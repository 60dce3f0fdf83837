"""The cancellable sample future, and the internal signal that unwinds a cancelled worker."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, RUNNING
from typing import Any, Callable, Optional

__all__ = ["Cancelled", "Final", "SampleFuture"]


class Cancelled(Exception):
    """Internal: the caller cancelled the future; unwinds the worker quietly."""

    def __init__(self, request_id: Optional[str]) -> None:
        super().__init__(request_id)
        self.request_id = request_id


class Final(Exception):
    """Internal: wraps an error that no layer may retry (a fatal poll answer, a failed request).

    The whole-call loop raises ``error`` itself to the caller; nothing else sees this wrapper.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class SampleFuture(Future):
    """A ``concurrent.futures.Future`` whose ``cancel()`` also stops a running sample.

    Cancelling a running sample stops its polling (and, where the server enables it,
    sends ``cancel_future``); ``result(timeout)`` that times out cancels nothing.

    Thread-safety: like any Future, safe to use from any thread.

    Example:
        >>> fut = SampleFuture()
        >>> fut.cancel(), fut.cancelled()
        (True, True)
    """

    def __init__(self, cancel_event: Optional[threading.Event] = None,
                 on_cancel: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self._on_cancel = on_cancel  # cuts the running sample's HTTP call at once

    def cancel(self) -> bool:
        if super().cancel():
            self._stop_work()
            return True
        with self._condition:
            if self._state != RUNNING:
                return False
            self._state = CANCELLED_AND_NOTIFIED
            self.cancel_event.set()
            for waiter in self._waiters:
                waiter.add_cancelled(self)
            self._condition.notify_all()
        self._stop_work()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _stop_work(self) -> None:
        self.cancel_event.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def _cancelled_state(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def set_result(self, result: Any) -> None:
        with self._condition:
            if not self._cancelled_state():
                super().set_result(result)

    def set_exception(self, exception: Optional[BaseException]) -> None:
        with self._condition:
            if not self._cancelled_state():
                super().set_exception(exception)
