"""One sample call, end to end: whole-call retries around submit and poll.

Runs on a worker thread of the SamplingClient's executor. Data moves one way: the call's
JSON body -> :class:`~tinkex._sampling.submit.Submitter` (asample, same seq_id on resends) ->
promise -> :func:`~tinkex._sampling.poll.poll_result` -> decoded SampleResponse. The loop gets
every input explicitly: the snapshot read when the call was made, the seq_id counter, the
target that can re-create a forgotten sampling session. It never calls back into the client.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Iterator, Optional, Set

import attrs

from .._clock import Clock
from .._limits import SessionLimits
from .._policy import retries_whole_call
from .._wire.bounds import ResultBounds
from ..errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ClientClosedError,
    NotFoundError,
    TinkexError,
)
from ..queue_state import QueueStateReporter
from ..telemetry import Telemetry
from ..types import CancelFutureRequest, SampleResponse
from .future import Final
from .poll import PollContext, poll_result
from .poller import CompletionPoller
from .snapshot import SampleCall, Snapshot
from .submit import Submitter
from .target import SamplingTarget

__all__ = ["Sampler", "MAX_SESSION_RECOVERIES"]

logger = logging.getLogger(__name__)

MAX_SESSION_RECOVERIES = 3  # per call: a server that forgets on every request is not retried forever


@attrs.define
class Progress:
    """Where one call stands: the snapshot it runs on, attempts made, sessions re-created.

    Not thread-safe: one call's loop (or, in poller mode, its chain of tasks) owns it.
    """

    state: Snapshot
    attempt: int = 0
    recoveries: int = 0


class Sampler:
    """Executes sample calls for one SamplingClient.

    Thread-safety: safe to call from many worker threads at once; its only mutable state is
    the seq_id counter (an ``itertools.count``, atomic under the GIL), the progress timestamp
    (one float assignment) and the set of polled request ids (guarded by ``_polling_lock``).
    """

    def __init__(
        self, submitter: Submitter, target: SamplingTarget, limits: SessionLimits, *, telemetry: Telemetry,
        reporter: QueueStateReporter, clock: Clock, seq_ids: Iterator[int], clone_id: int = 0,
    ) -> None:
        self.submitter = submitter
        self.transport = submitter.transport
        self.stop = self.transport.stop_event
        self.target = target
        self.limits = limits
        self.telemetry = telemetry
        self.reporter = reporter
        self.clock = clock
        self.seq_ids = seq_ids
        self.last_progress = clock.monotonic()
        self.clone_id = clone_id
        self._polling: Set[str] = set()
        self._polling_lock = threading.Lock()  # guards _polling and _pollers
        self._pollers: Dict[str, CompletionPoller] = {}
        self._closed = False

    def poller_for(self, state: Snapshot) -> CompletionPoller:
        """Poller mode: the one completion poller of ``state``'s sampling session (and this clone)."""
        with self._polling_lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            poller = self._pollers.get(state.sampling_session_id)
            if poller is None:
                poller = self._pollers[state.sampling_session_id] = CompletionPoller(
                    self.transport, state.sampling_session_id, self.clone_id, clock=self.clock,
                    policy=state.poll_policy, billing_window=state.billing_window)
            return poller

    def close_pollers(self) -> None:
        """Stop every completion poller; idempotent."""
        with self._polling_lock:
            self._closed = True
            pollers = list(self._pollers.values())
        for poller in pollers:
            poller.close()

    def execute(self, state: Snapshot, call: SampleCall) -> SampleResponse:
        """Run the call with whole-call retries (a new seq_id per attempt), starting on ``state``."""
        progress = Progress(state)
        while True:
            try:
                result = self._attempt(progress.state, call, next(self.seq_ids))
                self.last_progress = self.clock.monotonic()
                return result
            except Final as final:
                error, retryable = final.error, False
            except TinkexError as exc:
                error, retryable = exc, retries_whole_call(exc)
            # Outside the except blocks: raising ``error`` there would chain the Final wrapper to it as
            # context, a cycle (the wrapper holds the error) that breaks pickling and tracebacks.
            self.after_failure(progress, call, error, retryable=retryable)

    def after_failure(self, progress: Progress, call: SampleCall, error: BaseException, *, retryable: bool) -> None:
        """What follows a failed attempt: a re-created session (go on at once), the whole-call delay
        (slept here), or ``error`` raised when the call is over."""
        if progress.recoveries < MAX_SESSION_RECOVERIES and isinstance(error, TinkexError):
            newer = self._recovered(progress.state, error)
            if newer is not None:
                progress.state, progress.recoveries = newer, progress.recoveries + 1
                return
        progress.attempt += 1
        self._before_retry(progress.state, call, error, progress.attempt, retryable)

    def _recovered(self, state: Snapshot, exc: TinkexError) -> Optional[Snapshot]:
        """A 400 from asample or a 404 from a poll can mean the server forgot the sampling session
        (it restarted); then the target re-creates it and the call goes on with a new seq_id."""
        if not isinstance(exc, (BadRequestError, NotFoundError)):
            return None
        try:
            return self.target.recover(state, closed=self.stop.is_set())
        except TinkexError as failure:  # the original error is the one the caller should see
            logger.warning("Could not re-create the sampling session: %s", failure)
            return None

    def _before_retry(self, state: Snapshot, call: SampleCall, exc: BaseException, attempt: int,
                      retryable: bool) -> None:
        retry = state.retry_config
        if (not retryable or state.client_config.sample_no_retries or not retry.allows(attempt)
                or self._past(call.deadline) or self.stop.is_set()):
            raise exc
        delay = retry.delay(attempt, self.clock)
        if call.deadline is not None and self.clock.monotonic() + delay >= call.deadline:
            raise APITimeoutError(f"Out of time retrying after: {exc}", url=self.transport.url("asample"))
        cause = type(exc).__name__
        self.telemetry.record("retry", cause=cause)
        logger.debug("Retrying a sample (attempt %d) in %.2fs after %s", attempt, delay, cause)
        self.clock.sleep(delay, call.cancel)

    def _past(self, deadline: Optional[float]) -> bool:
        return deadline is not None and self.clock.monotonic() >= deadline

    def _attempt(self, state: Snapshot, call: SampleCall, seq_id: int) -> SampleResponse:
        answer = self.submitter.asample(state, call, seq_id)
        if isinstance(answer, SampleResponse):
            return answer
        request_id = answer.request_id
        with self._polling_lock:
            self._polling.add(request_id)
        try:
            result = poll_result(self.poll_context(state, call, request_id), request_id)
        finally:
            with self._polling_lock:
                self._polling.discard(request_id)
            self.reporter.forget(request_id)
        return result.with_sequence_ids(answer.sample_sequence_ids or ())

    def poll_context(self, state: Snapshot, call: SampleCall, request_id: str, *,
                     allow_metadata_only: bool = True) -> PollContext:
        budget = self.limits.response_budget
        return PollContext(
            transport=self.transport, clock=self.clock, policy=state.poll_policy,
            stop=self.stop, cancel=call.cancel, deadline=call.deadline,
            on_queue_state=lambda qs, reason: self.reporter.report(qs, reason, request_id),
            on_event=self._on_poll_event,
            reserve_bytes=lambda n: budget.hold(n, stop=self.stop, deadline=call.deadline, clock=self.clock),
            billing_window=state.billing_window, abort=call.abort, watchdog=lambda: self._check_progress(state),
            allow_metadata_only=allow_metadata_only, bounds=ResultBounds.for_request(call.body),
        )

    def _on_poll_event(self, event: str) -> None:
        if event in ("try_again", "timeout"):
            self.telemetry.record(event)
        else:
            self.telemetry.record("retry", cause=event)

    def _check_progress(self, state: Snapshot) -> None:
        retry = state.retry_config
        if not (retry.enable_stuck_detection and state.client_config.sample_enable_stuck_detection):
            return
        idle = self.clock.monotonic() - self.last_progress
        if idle > retry.progress_timeout:
            raise APIConnectionError(
                f"No progress made in {retry.progress_timeout:.1f}s. Requests appear to be stuck.",
                url=self.transport.url("retrieve_future"),
            )

    def cancel_remote(self, request_id: Optional[str], state: Snapshot) -> None:
        """Tell the server to drop an abandoned request, when its dynamic config enables it."""
        if request_id is None or not state.dynamic_config.sample_cancel_enabled or self.stop.is_set():
            return
        try:
            self.transport.request("POST", "cancel_future", body=CancelFutureRequest(request_id=request_id),
                                   read_timeout=30.0, max_retries=2)
        except TinkexError as exc:
            logger.info("cancel_future for %s failed: %s", request_id, exc)

    def cancel_polling(self, state: Snapshot, budget_s: float = 2.0) -> int:
        """At close: ask the server to drop requests still being polled; returns how many were sent.

        Sent only when dynamic config enables ``cancel_future``; at most
        ``sample_cancel_max_batch_size`` of them, within ``budget_s`` seconds in all, so closing
        never waits long on a slow server (finishing the session ends the rest of the work).
        """
        if not state.dynamic_config.sample_cancel_enabled or self.stop.is_set():
            return 0
        with self._polling_lock:
            request_ids = sorted(self._polling)[: state.dynamic_config.sample_cancel_max_batch_size]
        deadline = self.clock.monotonic() + budget_s
        sent = 0
        for request_id in request_ids:
            try:
                self.transport.request("POST", "cancel_future", body=CancelFutureRequest(request_id=request_id),
                                       read_timeout=budget_s, max_retries=0, deadline=deadline)
                sent += 1
            except TinkexError as exc:
                logger.info("cancel_future for %s at close failed: %s", request_id, exc)
                break
        return sent

