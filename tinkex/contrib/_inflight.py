"""Many calls that each return a future, at most ``limit`` in flight, results in call order.

Used by the lm-evaluation-harness backend to turn a list of requests into SDK futures and back
into a list without letting one failed request lose the others.
"""

from __future__ import annotations

import queue
from concurrent.futures import CancelledError, Future
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from ..errors import TinkexError

__all__ = ["run_in_flight"]

T = TypeVar("T")
R = TypeVar("R")
Start = Callable[[], Future[T]]  # begins one request


def run_in_flight(
    starts: Sequence[Start[T]],
    limit: int,
    finish: Callable[[int, T], R],
    on_done: Callable[[], None] = lambda: None,
) -> Tuple[List[Optional[R]], Dict[int, BaseException]]:
    """Call every ``starts[i]()`` with at most ``limit`` futures pending, and ``finish(i, result)`` on each.

    Runs on the calling thread only (``finish`` and ``on_done`` too, so they need no lock).

    Returns:
        ``(results, failures)``: ``results[i]`` is ``finish(i, ...)`` or None when request ``i``
        failed; ``failures`` maps each failed index to its error (a :class:`TinkexError` raised
        by ``starts[i]`` or ``finish``, the future's exception, or ``CancelledError``).

    Raises:
        BaseException: anything else (a bug, ``KeyboardInterrupt``) after cancelling what is pending.

    Example:
        >>> from concurrent.futures import Future
        >>> def done(value):
        ...     future = Future()
        ...     future.set_result(value)
        ...     return future
        >>> run_in_flight([lambda: done(1), lambda: done(2)], 1, lambda i, r: r * 10)
        ([10, 20], {})
    """
    results: List[Optional[R]] = [None] * len(starts)
    failures: Dict[int, BaseException] = {}
    pending: Dict[Future[T], int] = {}
    # Done callbacks, not concurrent.futures.wait: wait() never returns for a future cancelled
    # without being notified (one whose work item was dropped when its pool shut down).
    finished: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
    next_index = 0
    try:
        while next_index < len(starts) or pending:
            while next_index < len(starts) and len(pending) < limit:
                _start(starts[next_index], next_index, pending, failures, on_done, finished.put)
                next_index += 1
            if pending:
                future = finished.get()
                _settle(future, pending.pop(future), finish, results, failures)
                on_done()
    finally:
        for future in pending:  # only when leaving early: nothing is left running behind us
            future.cancel()
    return results, failures


def _start(start: Start[T], index: int, pending: Dict[Future[T], int],
           failures: Dict[int, BaseException], on_done: Callable[[], None], notify: Callable[[Future[T]], None]
           ) -> None:
    try:
        future = start()
    except TinkexError as exc:  # refused before anything was sent (bad input, a closed client)
        failures[index] = exc
        on_done()
        return
    pending[future] = index
    future.add_done_callback(notify)  # runs at once when the future is already done


def _settle(future: Future[T], index: int, finish: Callable[[int, T], R], results: List[Optional[R]],
            failures: Dict[int, BaseException]) -> None:
    if future.cancelled():
        failures[index] = CancelledError(f"request {index} was cancelled")
        return
    error = future.exception()
    if error is not None:
        failures[index] = error
        return
    try:
        results[index] = finish(index, future.result())
    except TinkexError as exc:  # an answer we cannot use (e.g. logprobs missing)
        failures[index] = exc
