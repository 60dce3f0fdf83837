"""A fixed pool of daemon worker threads for generations.

``ThreadPoolExecutor`` joins its (non-daemon) workers at interpreter exit, so a long simulated
generation could hold up exit; these workers are daemons and are joined by ``shutdown`` instead.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Executor, Future
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

__all__ = ["DaemonExecutor"]

T = TypeVar("T")
_WorkItem = Tuple[Future[Any], Callable[..., Any], Tuple[Any, ...], Dict[str, Any]]


class DaemonExecutor(Executor):
    """Runs submitted calls on ``workers`` daemon threads, first come first served.

    Thread-safe: ``submit`` and ``shutdown`` may be called from any thread; ``shutdown`` is
    idempotent and joins every worker.

    Example:
        >>> pool = DaemonExecutor(2, name="demo")
        >>> pool.submit(sum, [1, 2]).result()
        3
        >>> pool.shutdown()
    """

    def __init__(self, workers: int, name: str = "tinkex-worker") -> None:
        self._queue: queue.SimpleQueue[Optional[_WorkItem]] = queue.SimpleQueue()  # None: a worker's stop sentinel
        self._lock = threading.Lock()
        self._closed = False
        self._threads: List[threading.Thread] = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True) for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a shut-down executor")
            self._queue.put((future, fn, args, kwargs))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, timeout: Optional[float] = None) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    self._cancel_queued()
                for _ in self._threads:
                    self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join(timeout)

    def _cancel_queued(self) -> None:
        pending: List[Future[Any]] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item[0])
        for future in pending:
            future.cancel()
