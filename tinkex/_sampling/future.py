"""The awaitable futures tinkex returns, the cancellable sample future, and the internal signal
that unwinds a cancelled worker.

The futures are ``concurrent.futures.Future`` objects completed by the client's thread pool;
``await`` bridges one into the awaiting coroutine's own loop with ``asyncio.wrap_future``, so
tinkex never starts an event loop or a loop thread of its own.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, PENDING, RUNNING
from typing import Any, Callable, Generator, Optional, TypeVar

__all__ = ["APIFuture", "Cancelled", "Final", "SampleFuture"]

T = TypeVar("T")


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


class APIFuture(Future[T]):
    """A ``concurrent.futures.Future`` that can also be awaited (the official SDK's ``APIFuture``).

    ``result(timeout)`` blocks the calling thread; ``await future`` and ``await
    future.result_async(timeout)`` wait in the awaiting coroutine's loop instead. Cancelling the
    awaiting task cancels the future (and its call), as ``asyncio.wrap_future`` does; a
    ``result_async(timeout)`` that times out cancels nothing, like ``result(timeout)``.

    Thread-safety: like any Future, safe to use from any thread and any event loop.

    Example:
        >>> import asyncio
        >>> fut: APIFuture[int] = APIFuture()
        >>> fut.set_result(7)
        >>> asyncio.run(fut.result_async()), fut.result(), fut.future() is fut
        (7, 7, True)
    """

    def __await__(self) -> Generator[Any, None, T]:
        return asyncio.wrap_future(self).__await__()

    async def result_async(self, timeout: Optional[float] = None) -> T:
        """Wait for the result in the running event loop; ``TimeoutError`` after ``timeout`` s."""
        wrapped = asyncio.wrap_future(self)
        if timeout is None:
            return await wrapped
        done, _ = await asyncio.wait({wrapped}, timeout=timeout)  # wait() never cancels on timeout
        if not done:
            raise TimeoutError(f"no result within {timeout} s")
        return wrapped.result()

    def future(self) -> Future[T]:
        """The ``concurrent.futures.Future`` of this call: the object itself."""
        return self

    async def coroutine(self) -> T:
        """This future as a coroutine, for ``asyncio.create_task`` and ``asyncio.run``."""
        return await self


class SampleFuture(APIFuture[T]):
    """An awaitable ``concurrent.futures.Future`` whose ``cancel()`` also stops a running sample.

    Cancelling a running sample stops its polling (and, where the server enables it,
    sends ``cancel_future``); ``result(timeout)`` that times out cancels nothing.

    A thread that waits with ``result()`` (no timeout) for a sample no worker has started yet
    runs it itself instead of sleeping while a worker runs it: the work is submitted to the
    pool as usual, and whichever thread claims it first (:meth:`claim`) runs it. One sample
    at a time then costs no hand-off between threads; a bounded ``result(timeout)`` never
    runs the work, so it returns on time.

    Thread-safety: like any Future, safe to use from any thread; :meth:`claim` lets exactly
    one thread start the work.

    Example:
        >>> fut: SampleFuture[int] = SampleFuture()
        >>> fut.cancel(), fut.cancelled()
        (True, True)
    """

    def __init__(self, cancel_event: Optional[threading.Event] = None,
                 on_cancel: Optional[Callable[[], None]] = None) -> None:
        super().__init__()
        self.cancel_event = cancel_event if cancel_event is not None else threading.Event()
        self._on_cancel = on_cancel  # cuts the running sample's HTTP call at once
        self._work: Optional[Callable[[], None]] = None  # the work the pool was given, see run_with()

    def run_with(self, work: Callable[[], None]) -> None:
        """Name the work the pool runs for this future; ``result()`` runs it if no worker has
        started it yet. ``work`` must begin with :meth:`claim` and do nothing when that fails."""
        self._work = work

    def claim(self) -> bool:
        """Start the work: True for the one thread that moves this future from pending to running;
        False if another thread already did, or it is cancelled (waiters are told) or done."""
        with self._condition:
            self._work = None  # started, or never to start: a kept future must not keep its request alive
            if self._state not in (PENDING, CANCELLED):
                return False
            return self.set_running_or_notify_cancel()

    def result(self, timeout: Optional[float] = None) -> T:
        work = self._work
        if work is not None and timeout is None and self._state == PENDING:
            self._work = None
            work()  # claims the work first: a worker that got there before us keeps it
        return super().result(timeout)

    def cancel(self) -> bool:
        if super().cancel():
            self._work = None
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
