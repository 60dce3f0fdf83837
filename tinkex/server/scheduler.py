"""Generation scheduling: a bounded set of workers, a FIFO queue, completion futures, queue states.

At most ``max_concurrent_generations`` requests generate at once on a thread pool; the rest
wait in arrival order and report ``paused_capacity`` (with a reason) to polls while they wait.
Small requests of cheap models (echo) with no simulated token delay run inline on the event
loop: their cost is lower than a thread hand-off; anything heavier runs on a worker.
Completion wakes long polls through one asyncio future per record (created only when someone
waits), streams through their listener events, and poller-mode clients (``retrieve_futures``)
through the completion logs of sampling sessions that use it. Every operation is O(1) per
request.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
from concurrent.futures import Executor
from typing import Deque, Dict, Optional, Tuple

from ..errors import ValidationError
from ..types import SampleResponse
from ._generate import Emit, Event, GenerationCancelled, run_plan
from ._plan import GenerationPlan
from ._stats import Stats
from .store import CANCELLED, DONE, FAILED, QUEUED, RUNNING, RequestRecord, Store

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)

CLONE_STRIDE = 1_000_000_000


class Scheduler:
    """Runs generations and reports their progress. Not thread-safe: call only on the event loop.

    Worker threads hand results back with ``call_soon_threadsafe``; nothing else crosses threads.

    Args:
        loop: the server's event loop.
        executor: the worker pool, sized ``max_concurrent``.
        max_concurrent: generations running at once.
        store: where completions are recorded (for expiry and pending counts).
        stats: counters.
        token_delay_s: simulated decoding time per token.
        inline_cheap: run cheap models on the loop when there is no token delay.
        inline_max_tokens: only requests generating at most this many tokens run inline; a
            heavier one (even of a cheap model) goes to the workers so it cannot stall the loop.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        max_concurrent: int,
        store: Store,
        stats: Stats,
        token_delay_s: float = 0.0,
        inline_cheap: bool = True,
        inline_max_tokens: int = 4096,
    ) -> None:
        self._loop = loop
        self._executor = executor
        self.max_concurrent = max_concurrent
        self._store = store
        self._stats = stats
        self._delay_s = token_delay_s
        self._inline_cheap = inline_cheap and token_delay_s == 0
        self._inline_max_tokens = inline_max_tokens
        self._queue: Deque[RequestRecord] = collections.deque()
        # generated answers waiting out their simulated decoding time: their timer and result
        self._decoding: Dict[RequestRecord, Tuple[asyncio.TimerHandle, asyncio.Future[SampleResponse]]] = {}
        self.running = 0
        self.queued = 0

    # submitting ---------------------------------------------------------------------------

    def submit(self, record: RequestRecord) -> None:
        """Start (or queue) a generation for ``record``; counts it in ``record.generations``."""
        record.generations += 1
        self._stats.count("generations")
        plan = _plan_of(record)
        if self._inline_cheap and plan.is_cheap and plan.work_tokens <= self._inline_max_tokens:
            self._run_inline(record, plan)
        elif self.running < self.max_concurrent:
            self._start(record)
        else:
            self._queue.append(record)
            self.queued += 1

    def _run_inline(self, record: RequestRecord, plan: GenerationPlan) -> None:
        emit = functools.partial(self._publish, record) if record.streaming else None
        try:
            response = run_plan(plan, emit=emit)
        except Exception as exc:
            self._fail_from(record, exc)
        else:
            self._complete(record, DONE, response=response)

    def _start(self, record: RequestRecord) -> None:
        self.running += 1
        record.state = RUNNING
        record.cancel_flag = threading.Event()
        emit = self._threadsafe_emitter(record) if record.streaming else None
        # A streamed answer is paced token by token on its worker. One read whole is generated at
        # once and its decoding time waited here, on a timer: thousands of slow generations then
        # hold no thread, and no crowd of waking threads starves the event loop of the GIL.
        delay = self._delay_s if record.streaming else 0.0
        future = self._loop.run_in_executor(
            self._executor, run_plan, _plan_of(record), record.cancel_flag, delay, emit
        )
        future.add_done_callback(functools.partial(self._generated, record, self._loop.time()))

    def _generated(self, record: RequestRecord, started: float, future: asyncio.Future[SampleResponse]) -> None:
        remaining = self._decoding_left(record, started, future)
        if remaining <= 0:
            self._worker_done(record, future)
            return
        handle = self._loop.call_later(remaining, self._decoded, record, future)
        self._decoding[record] = (handle, future)

    def _decoding_left(self, record: RequestRecord, started: float, future: asyncio.Future[SampleResponse]) -> float:
        """Seconds of simulated decoding still owed by a generation read whole (0: settle now)."""
        if not self._delay_s or record.streaming or record.state != RUNNING or future.cancelled():
            return 0.0
        if future.exception() is not None:
            return 0.0
        tokens = sum(len(sequence.tokens) for sequence in future.result().sequences)
        return self._delay_s * tokens - (self._loop.time() - started)

    def _decoded(self, record: RequestRecord, future: asyncio.Future[SampleResponse]) -> None:
        self._decoding.pop(record, None)
        self._worker_done(record, future)

    def _threadsafe_emitter(self, record: RequestRecord) -> Emit:
        call_soon = self._loop.call_soon_threadsafe
        publish = self._publish

        def emit(event: Event) -> None:
            call_soon(publish, record, event)

        return emit

    def _worker_done(self, record: RequestRecord, future: asyncio.Future[SampleResponse]) -> None:
        self.running -= 1
        try:
            if record.state == RUNNING:
                self._settle(record, future)
            elif not future.cancelled():
                future.exception()  # already settled (cancelled): the outcome is of no interest
        finally:
            self._pump()

    def _settle(self, record: RequestRecord, future: asyncio.Future[SampleResponse]) -> None:
        if future.cancelled():
            self._complete(record, CANCELLED, error="generation was stopped", category="unknown")
            return
        exc = future.exception()
        if exc is None:
            self._complete(record, DONE, response=future.result())
        elif isinstance(exc, GenerationCancelled):
            self._complete(record, CANCELLED, error="request was cancelled", category="user")
        else:
            self._fail_from(record, exc)

    def _fail_from(self, record: RequestRecord, exc: BaseException) -> None:
        if isinstance(exc, ValidationError):
            self._complete(record, FAILED, error=str(exc), category="user")
            return
        logger.error("generation of %s failed", record.request_id, exc_info=exc)
        self._complete(
            record, FAILED, error=f"internal error while generating ({type(exc).__name__})", category="server"
        )

    def _pump(self) -> None:
        queue = self._queue
        while queue and self.running < self.max_concurrent:
            record = queue.popleft()
            if record.state == QUEUED:
                self.queued -= 1
                self._start(record)

    # finishing ----------------------------------------------------------------------------

    def cancel(self, record: RequestRecord, reason: str = "request was cancelled", category: str = "user") -> bool:
        """Stop ``record`` if it is pending; True when it was. A queued record never starts.

        ``category`` is who the failure is blamed on: the client that cancelled (``user``) or
        the server itself (``server``, e.g. when it shuts down).
        """
        if not record.is_pending:
            return False
        if record.state == QUEUED:
            self.queued -= 1
        elif record.cancel_flag is not None:
            record.cancel_flag.set()
        decoding = self._decoding.pop(record, None)
        self._complete(record, CANCELLED, error=reason, category=category)
        if decoding is not None:  # generated, waiting out its decoding time: free the slot now
            handle, future = decoding
            handle.cancel()
            self._worker_done(record, future)
        return True

    def _complete(
        self,
        record: RequestRecord,
        state: str,
        *,
        response: Optional[SampleResponse] = None,
        error: Optional[str] = None,
        category: Optional[str] = None,
    ) -> None:
        record.state = state
        record.response = response
        record.error = error
        record.category = category
        record.plan = None if state == DONE else record.plan  # the prompt is not needed any more
        self._store.completed(record)
        waiter = record.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._wake_listeners(record)
        self._log_completion(record)

    def _publish(self, record: RequestRecord, event: Event) -> None:
        record.events.append(event)
        self._wake_listeners(record)

    @staticmethod
    def _wake_listeners(record: RequestRecord) -> None:
        for listener in record.listeners:
            listener.set()

    def _log_completion(self, record: RequestRecord) -> None:
        """Feed poller-mode clients; a log exists only once its poller has polled."""
        if record.seq_id is None or record.sampling_session_id is None:
            return
        sampler = self._store.sampling_sessions.get(record.sampling_session_id)
        if sampler is not None and sampler.poller_logs:
            log = sampler.poller_logs.get(record.seq_id // CLONE_STRIDE)
            if log is not None:
                log.append(record)

    # waiting ------------------------------------------------------------------------------

    async def wait(self, record: RequestRecord, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``record`` to finish; True when it has."""
        if not record.is_pending:
            return True
        waiter = record.waiter
        if waiter is None or waiter.done():
            waiter = record.waiter = self._loop.create_future()
        if timeout > 0:
            await asyncio.wait((waiter,), timeout=timeout)
        return not record.is_pending

    def queue_state(self, record: RequestRecord) -> Tuple[str, Optional[str]]:
        """``(queue_state, reason)`` of a pending record: queued ones are paused for capacity."""
        if record.state == QUEUED:
            return "paused_capacity", (
                f"waiting for capacity: all {self.max_concurrent} generation slots are busy, "
                f"{self.queued} request(s) queued"
            )
        return "active", None


def _plan_of(record: RequestRecord) -> GenerationPlan:
    """The plan of a request about to generate: only a finished request has dropped it."""
    plan = record.plan
    assert plan is not None, f"{record.request_id} generates after its plan was dropped"
    return plan
