"""Call deadlines that hold even against a server trickling bytes.

A socket read timeout bounds the gap between two bytes, not a whole answer: a server that
sends one byte per second keeps a read alive forever. The :class:`DeadlineWatchdog` shuts
down the socket of a call still in progress when its deadline passes, which makes the
blocked read fail at once; the transport then reports :class:`~tinkex.errors.APITimeoutError`.

A call is watched from the moment its connection sends the request until the transport has
read the whole answer (``with watchdog.watching(deadline):``); connections are registered by
the transport's connection class through :func:`watch_connection`, on the calling thread.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

__all__ = ["Abort", "DeadlineWatchdog", "abortable", "watch_connection", "shutdown_connection"]

_call = threading.local()  # the watchdog, deadline and abort handle of the call running on this thread, if any


def watch_connection(conn: Any) -> None:
    """Register ``conn`` with the deadline and abort handle of the call running on this thread (if any)."""
    watchdog: Optional[DeadlineWatchdog] = getattr(_call, "watchdog", None)
    if watchdog is not None:
        _call.tokens.append(watchdog.arm(conn, _call.deadline))
    abort: Optional[Abort] = getattr(_call, "abort", None)
    if abort is not None:
        abort.attach(conn)


class Abort:
    """Lets any thread cut, at once, the HTTP calls another thread makes on behalf of one task.

    A sample's worker blocks for up to the server's poll hold (10 s) in a ``retrieve_future``
    read; when its future is cancelled, :meth:`abort` shuts that read's socket down so the
    worker unwinds now, not when the server answers. Calls made after :meth:`abort` fail as
    soon as they connect. Connections are only attached while a call runs inside
    :func:`abortable`, so a connection back in the pool is never cut.

    Thread-safety: one lock guards the attached connections and the aborted flag; shutting a
    socket down happens under it, so a connection being detached is never cut.

    Example:
        >>> handle = Abort()
        >>> handle.abort(); handle.aborted
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: List[Any] = []
        self._callbacks: List[Callable[[], None]] = []
        self.aborted = False

    def on_abort(self, callback: Callable[[], None]) -> None:
        """Also call ``callback`` when aborted (at once if already aborted); for work that is not an HTTP call."""
        with self._lock:
            if not self.aborted:
                self._callbacks.append(callback)
                return
        callback()

    def attach(self, conn: Any) -> None:
        with self._lock:
            if self.aborted:
                shutdown_connection(conn)
            else:
                self._connections.append(conn)

    def detach_all(self) -> None:
        with self._lock:
            self._connections.clear()

    def abort(self) -> None:
        """Cut every call running under this handle, and every later one; idempotent."""
        with self._lock:
            if self.aborted:
                return
            self.aborted = True
            for conn in self._connections:
                shutdown_connection(conn)
            self._connections.clear()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


@contextmanager
def abortable(abort: Optional[Abort]) -> Iterator[None]:
    """Connections this thread sends on inside the block can be cut by ``abort``."""
    if abort is None:
        yield
        return
    _call.abort = abort
    try:
        yield
    finally:
        _call.abort = None
        abort.detach_all()


class DeadlineWatchdog:
    """Shuts down the sockets of calls that outlive their deadline.

    Thread-safety: ``watching`` may be used from any number of threads; one daemon thread,
    started on first use, does the shutting down and is stopped and joined by ``close()``.

    Example:
        >>> watchdog = DeadlineWatchdog(time.monotonic)  # doctest: +SKIP
        >>> with watchdog.watching(time.monotonic() + 5):  # doctest: +SKIP
        ...     ...  # connections that send requests here are cut at the deadline
        >>> watchdog.close()  # doctest: +SKIP
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._cond = threading.Condition()  # guards _heap, _armed, _thread and _closed
        self._heap: List[Tuple[float, int]] = []
        self._armed: Dict[int, Any] = {}
        self._ids = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._closed = False

    @contextmanager
    def watching(self, deadline: Optional[float]) -> Iterator[None]:
        """Watch every connection this thread sends on inside the block, until the block ends."""
        if deadline is None:
            yield
            return
        _call.watchdog, _call.deadline, _call.tokens = self, deadline, []
        try:
            yield
        finally:
            tokens = _call.tokens
            _call.watchdog = None
            self._disarm(tokens)

    def arm(self, conn: Any, deadline: float) -> int:
        token = next(self._ids)
        with self._cond:
            if self._closed:
                return token
            earliest = self._heap[0][0] if self._heap else None
            self._armed[token] = conn
            heapq.heappush(self._heap, (deadline, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tinkex-deadline-watchdog", daemon=True)
                self._thread.start()
            elif earliest is None or deadline < earliest:
                self._cond.notify()
        return token

    def _disarm(self, tokens: List[int]) -> None:
        if tokens:
            with self._cond:
                for token in tokens:
                    self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            with self._cond:  # shut down under the lock: a disarmed call's connection is never touched
                expired = self._wait_for_expiry()
                if expired is None:
                    return
                for conn in expired:
                    shutdown_connection(conn)

    def _wait_for_expiry(self) -> Optional[List[Any]]:
        """Under the lock: block until some deadline passes; None once closed."""
        while not self._closed:
            heap = self._heap
            while heap and heap[0][1] not in self._armed:
                heapq.heappop(heap)  # disarmed: the call finished in time
            if not heap:
                self._cond.wait()
                continue
            wait = heap[0][0] - self._monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            expired = []
            while heap and heap[0][0] <= self._monotonic():
                conn = self._armed.pop(heapq.heappop(heap)[1], None)
                if conn is not None:
                    expired.append(conn)
            return expired
        return None

    def close(self) -> None:
        """Stop the thread; idempotent."""
        with self._cond:
            self._closed = True
            self._armed.clear()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)


def shutdown_connection(conn: Any) -> None:
    """Shut down ``conn``'s socket (if it has one) so a read blocked on it fails at once."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
