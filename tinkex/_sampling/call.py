"""One sample call, end to end: whole-call retries, dispatch, asample with resubmits, polling.

Runs on a worker thread of the SamplingClient's executor. Data moves one way: the call's
JSON body -> asample -> promise -> poll answers -> decoded SampleResponse.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Optional, Set

import attrs

from .._clock import Clock
from .._http.transport import Response, Transport, is_bare_400
from .._policy import PollPolicy, RetryConfig
from .._session import Holder
from .._wire import codec as _codec
from ..errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    BadRequestError,
    ClientClosedError,
    NotFoundError,
    PromiseExpiredError,
    TinkexError,
)
from ..queue_state import QueueStateReporter
from ..telemetry import Telemetry
from ..types import ClientConfig, DynamicConfig, QueueState, SamplePromise, SampleResponse
from .future import Cancelled
from .poll import PollContext, poll_result

__all__ = ["Snapshot", "SampleCall", "Sampler"]

logger = logging.getLogger(__name__)

LARGE_REQUEST_BYTES = 128 * 1024
SUBMIT_RETRY_WINDOW = 300.0
MAX_SESSION_RECOVERIES = 3  # per call: a server that forgets on every request is not retried forever
_RETRYABLE_STATUSES = frozenset({408, 409, 429})


@attrs.frozen
class Snapshot:
    """A SamplingClient's published configuration; replaced whole, read without a lock."""

    session_id: str
    sampling_session_id: str
    base_model: Optional[str]
    model_path: Optional[str]
    client_config: ClientConfig
    dynamic_config: DynamicConfig
    retry_config: RetryConfig
    poll_policy: PollPolicy
    tokenizer_id: Optional[str] = None
    stream_supported: bool = True


@attrs.frozen
class SampleCall:
    """One logical call: its body (without ``seq_id``), size estimate and deadline."""

    body: Dict[str, Any]
    estimated_bytes: int
    deadline: Optional[float]
    sdk_method: str
    cancel: threading.Event


def is_retryable(exc: BaseException) -> bool:
    """What the whole-call layer retries: connection errors, 410, and 408/409/429/5xx."""
    if isinstance(exc, (APIConnectionError, PromiseExpiredError)):
        return True
    if isinstance(exc, APIStatusError):
        if exc.fatal:
            return False
        return exc.status_code in _RETRYABLE_STATUSES or exc.status_code >= 500
    return False


class Sampler:
    """Executes sample calls for one SamplingClient.

    Thread-safety: safe to call from many worker threads at once; it holds no mutable state
    of its own beyond the seq_id counter (an ``itertools.count``, atomic under the GIL) and
    the progress timestamp (one float assignment).
    """

    def __init__(
        self, holder: Holder, transport: Transport, *, telemetry: Telemetry, reporter: QueueStateReporter,
        clock: Clock, next_seq_id: Callable[[], int], snapshot: Callable[[], Snapshot],
        recover: Optional[Callable[[Snapshot], bool]] = None,
    ) -> None:
        self.holder = holder
        self.recover = recover
        self.transport = transport
        self.stop = transport.stop_event
        self.telemetry = telemetry
        self.reporter = reporter
        self.clock = clock
        self.next_seq_id = next_seq_id
        self.snapshot = snapshot
        self.last_progress = clock.monotonic()
        self._polling: Set[str] = set()
        self._polling_lock = threading.Lock()  # guards _polling: the requests close() cancels on the server

    def execute(self, call: SampleCall) -> SampleResponse:
        """Run the call with whole-call retries (a new seq_id per attempt)."""
        attempt = recoveries = 0
        while True:
            state = self.snapshot()
            seq_id = self.next_seq_id()
            try:
                result = self._attempt(state, call, seq_id)
                self.last_progress = self.clock.monotonic()
                return result
            except TinkexError as exc:
                if recoveries < MAX_SESSION_RECOVERIES and self._session_recovered(state, exc):
                    recoveries += 1
                    continue
                attempt += 1
                self._before_retry(state, call, exc, attempt)

    def _session_recovered(self, state: Snapshot, exc: TinkexError) -> bool:
        """A 400 from asample or a 404 from a poll can mean the server forgot the sampling session
        (it restarted); then the client re-creates it and the call goes on with a new seq_id."""
        if not isinstance(exc, (BadRequestError, NotFoundError)) or self.recover is None:
            return False
        try:
            return self.recover(state)
        except TinkexError as failure:  # the original error is the one the caller should see
            logger.warning("Could not re-create the sampling session: %s", failure)
            return False

    def _before_retry(self, state: Snapshot, call: SampleCall, exc: TinkexError, attempt: int) -> None:
        retry = state.retry_config
        if (not is_retryable(exc) or state.client_config.sample_no_retries or not retry.allows(attempt)
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
        body = dict(call.body, seq_id=seq_id, sampling_session_id=state.sampling_session_id)
        payload = _codec.dumps(body)
        dispatch = self.holder.dispatch
        assert dispatch is not None
        with dispatch.admit(call.estimated_bytes, stop=self.stop, deadline=call.deadline):
            answer = self._submit(state, call, payload)
        if isinstance(answer, SampleResponse):
            return answer
        ctx = self._poll_context(state, call, answer.request_id)
        with self._polling_lock:
            self._polling.add(answer.request_id)
        try:
            result = poll_result(ctx, answer.request_id)
        finally:
            with self._polling_lock:
                self._polling.discard(answer.request_id)
            self.reporter.forget(answer.request_id)
        return result.with_sequence_ids(answer.sample_sequence_ids or ())

    def _poll_context(self, state: Snapshot, call: SampleCall, request_id: str) -> PollContext:
        budget = self.holder.response_budget
        assert budget is not None
        return PollContext(
            transport=self.transport, clock=self.clock, policy=state.poll_policy,
            stop=self.stop, cancel=call.cancel, deadline=call.deadline,
            on_queue_state=lambda qs, reason: self.reporter.report(qs, reason, request_id),
            on_event=self._on_poll_event,
            reserve_bytes=lambda n: budget.hold(n, stop=self.stop, deadline=call.deadline, clock=self.clock),
            watchdog=lambda: self._check_progress(state),
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

    def _submit(self, state: Snapshot, call: SampleCall, payload: bytes) -> Any:
        """POST asample, resubmitting the same seq_id on 429, 402, 408/409/5xx and connection errors."""
        headers = {"X-Tinker-Sampling-Backpressure": "1", "x-sdk-method": call.sdk_method}
        response = self.submit_with_resubmits(state, call, lambda: self.transport.request(
            "POST", "asample", body=payload, max_retries=0, headers=headers, deadline=call.deadline, check=False,
        ))
        return _decode_promise(response)

    def submit_with_resubmits(self, state: Snapshot, call: SampleCall, send: Callable[[], Response]) -> Response:
        """Call ``send`` until it answers 200, as asample is submitted (protocol 4.8, 7.4, 9.3).

        Before each send: the 429 backoff is waited out and cancellation checked. 429 and 402
        back off; 408/409/5xx, a bare 400 and connection errors are resent after 1, 2, 4 ... s
        (within ``SUBMIT_RETRY_WINDOW`` and the call's deadline); other answers raise their
        typed error. ``send`` is one HTTP call carrying the same seq_id every time.

        Returns:
            The 200 answer, as ``send`` returned it.
        """
        started = self.clock.monotonic()
        failures = 0
        billing_since: Optional[float] = None
        while True:
            self.holder.backoff.wait(stop=self.stop, deadline=call.deadline)
            self._check_cancel(call)
            try:
                response = send()
            except APIConnectionError as exc:
                if self._past(call.deadline):
                    raise
                error: TinkexError = exc
            else:
                if response.status == 200:
                    self.telemetry.record("submission")
                    return response
                if response.status == 429:
                    self._on_rate_limited(call, response)
                    continue
                if response.status == 402:
                    billing_since = self._billing_pause(state, call, response, billing_since)
                    continue
                if not _resubmittable(response):
                    raise self.transport.error_for(response)
                error = self.transport.error_for(response)
            failures += 1
            self._resubmit_pause(call, error, failures, started)

    def cancel_remote(self, request_id: Optional[str], state: Snapshot) -> None:
        """Tell the server to drop an abandoned request, when its dynamic config enables it."""
        if request_id is None or not state.dynamic_config.sample_cancel_enabled or self.stop.is_set():
            return
        try:
            self.transport.request("POST", "cancel_future", body={"request_id": request_id},
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
                self.transport.request("POST", "cancel_future", body={"request_id": request_id},
                                       read_timeout=budget_s, max_retries=0, deadline=deadline)
                sent += 1
            except TinkexError as exc:
                logger.info("cancel_future for %s at close failed: %s", request_id, exc)
                break
        return sent

    def _check_cancel(self, call: SampleCall) -> None:
        if call.cancel.is_set():
            raise Cancelled(None)
        if self.stop.is_set():
            raise ClientClosedError("the client is closed")

    def _on_rate_limited(self, call: SampleCall, response: Response) -> None:
        seconds = 1.0 if call.estimated_bytes <= LARGE_REQUEST_BYTES else 5.0
        self.holder.backoff.back_off(seconds)
        self.telemetry.record("rate_limited")
        try:
            body = response.json("429 body")
        except TinkexError:
            return
        if isinstance(body, dict):
            state = QueueState.parse(body.get("queue_state"))
            if state is not QueueState.UNKNOWN:
                reason = body.get("queue_state_reason")
                request_id = body.get("request_id")
                self.reporter.report(state, reason if isinstance(reason, str) else None,
                                     request_id if isinstance(request_id, str) else "asample")

    def _billing_pause(
        self, state: Snapshot, call: SampleCall, response: Response, since: Optional[float]
    ) -> float:
        now = self.clock.monotonic()
        since = now if since is None else since
        if now - since > state.client_config.billing_exception_max_pause_duration_sec:
            raise self.transport.error_for(response)
        logger.warning("The job is paused due to billing status. Error: %s", self.transport.error_for(response).body)
        self.holder.backoff.back_off(5.0)
        return since

    def _resubmit_pause(self, call: SampleCall, error: TinkexError, failures: int, started: float) -> None:
        delay = min(2.0 ** (failures - 1), 30.0)
        now = self.clock.monotonic()
        if now - started + delay > SUBMIT_RETRY_WINDOW:
            raise error
        if call.deadline is not None and now + delay >= call.deadline:
            raise error
        self.telemetry.record("resubmission")
        logger.debug("Resubmitting asample (same seq_id) in %.1fs after %s", delay, error)
        if self.clock.sleep(delay, call.cancel):
            self._check_cancel(call)


def _resubmittable(response: Response) -> bool:
    status = response.status
    return status in (408, 409) or status >= 500 or is_bare_400(response)


def _decode_promise(response: Response) -> Any:
    body = response.json("asample answer")
    if isinstance(body, dict) and "sequences" in body and "request_id" not in body:
        return SampleResponse.from_json(body)
    return SamplePromise.from_json(body)
