"""Submitting a sample: asample (and stream_sample) resent with the same ``seq_id`` until accepted.

Layer 2 of protocol.md 7.1, with 7.4 (429 backpressure) and 7.6 (billing). Both ``sample``
and ``sample_stream`` go through :meth:`Submitter.resend_until_ok`: only the one HTTP call
differs. What each answer means comes from :func:`tinkex._policy.classify`.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Union

from .._clock import Clock
from .._http import EventStream, Response, Sender
from .._limits import SessionLimits
from .._policy import Action, Phase, SubmitPolicy, classify
from .._wire import codec
from ..errors import APIConnectionError, ClientClosedError, TinkexError
from ..queue_state import QueueStateReporter
from ..telemetry import Telemetry
from ..types import QueueState, SamplePromise, SampleResponse
from .billing import BillingPause
from .future import Cancelled, Final
from .snapshot import SampleCall, Snapshot

__all__ = ["Submitter", "decode_promise"]

logger = logging.getLogger(__name__)

SUBMIT_HEADERS = {"X-Tinker-Sampling-Backpressure": "1"}


#: What one send returns: a read Response, or an open event stream that looks like one.
Answer = Union[Response, EventStream]


class Submitter:
    """Sends a call's submit request until the server accepts it.

    Thread-safety: safe to call from many worker threads; it keeps no per-call state (each
    call's failures and billing incident live on that call's stack).
    """

    def __init__(
        self, transport: Sender, limits: SessionLimits, *, telemetry: Telemetry, clock: Clock,
        reporter: Optional[QueueStateReporter] = None, policy: Optional[SubmitPolicy] = None,
    ) -> None:
        self.transport = transport
        self.limits = limits
        self.telemetry = telemetry
        self.reporter = reporter
        self.clock = clock
        self.policy = policy or SubmitPolicy()

    @property
    def stop(self) -> threading.Event:
        return self.transport.stop_event

    def asample(self, state: Snapshot, call: SampleCall, seq_id: int) -> Union[SamplePromise, SampleResponse]:
        """POST asample with ``seq_id`` under the session's dispatch gate; the promise (or a direct result)."""
        payload = codec.dumps(dict(call.body, seq_id=seq_id, sampling_session_id=state.sampling_session_id))
        headers = dict(SUBMIT_HEADERS, **{"x-sdk-method": call.sdk_method})
        with self.limits.dispatch.admit(call.estimated_bytes, stop=self.stop, deadline=call.deadline):
            response = self.resend_until_ok(state, call, lambda: self.transport.request(
                "POST", "asample", body=payload, max_retries=0, headers=headers, deadline=call.deadline,
                check=False, abort=call.abort,
            ), unreachable=Final)  # the host is down: the whole-call layer must not start over
        assert isinstance(response, Response)
        return decode_promise(response)

    def resend_until_ok(self, state: Snapshot, call: SampleCall, send: Callable[[], Answer], *,
                        unreachable: Optional[Callable[[TinkexError], BaseException]] = None) -> Answer:
        """Call ``send`` until it answers 2xx (protocol.md 4.8, 7.4, 7.6, 9.3); returns that answer.

        Before each send the session's 429 backoff is waited out and cancellation checked. A
        429 backs off the whole session, a 402 pauses within the billing window, transient
        answers and connection errors are resent after 1, 2, 4 ... s (within the submit
        window and the call's deadline); any other answer raises its typed error.
        """
        started = self.clock.monotonic()
        failures = 0
        billing = BillingPause(state.billing_window, self.clock)
        while True:
            self.limits.backoff.wait(stop=self.stop, deadline=call.deadline)
            self.check_cancel(call)
            try:
                response = send()
            except APIConnectionError as exc:
                if _past(self.clock, call.deadline):
                    raise
                error: TinkexError = exc
            else:
                action = classify(Phase.SUBMIT, response.status, response.content)
                if action is Action.DONE:
                    self.telemetry.record("submission")
                    return response
                if action is Action.BACKOFF:
                    self._on_rate_limited(call, response)
                    continue
                if action is Action.BILLING:
                    billing.check(self.transport.error_for(response))
                    self.limits.backoff.back_off(self.policy.billing_delay)
                    continue
                error = self.transport.error_for(response)
                if action is not Action.RETRY:
                    raise error
            failures += 1
            self._resend_pause(call, error, failures, started, unreachable)

    def check_cancel(self, call: SampleCall) -> None:
        if call.cancel.is_set():
            raise Cancelled(None)
        if self.stop.is_set():
            raise ClientClosedError("the client is closed")

    def _on_rate_limited(self, call: SampleCall, response: Answer) -> None:
        self.limits.backoff.back_off(self.policy.backoff_for(call.estimated_bytes))
        self.telemetry.record("rate_limited")
        try:
            body = response.json("429 body")
        except TinkexError:
            return
        if isinstance(body, dict) and self.reporter is not None:
            state = QueueState.parse(body.get("queue_state"))
            if state is not QueueState.UNKNOWN:
                reason = body.get("queue_state_reason")
                request_id = body.get("request_id")
                self.reporter.report(state, reason if isinstance(reason, str) else None,
                                     request_id if isinstance(request_id, str) else "asample")

    def _resend_pause(self, call: SampleCall, error: TinkexError, failures: int, started: float,
                      unreachable: Optional[Callable[[TinkexError], BaseException]]) -> None:
        delay = self.policy.resend_delay(failures)
        now = self.clock.monotonic()
        if now - started + delay > self.policy.window:  # connection errors for the whole window: ``unreachable``
            raise unreachable(error) if unreachable and isinstance(error, APIConnectionError) else error
        if call.deadline is not None and now + delay >= call.deadline:
            raise error
        self.telemetry.record("resubmission")
        first_connection_failure = failures == 1 and isinstance(error, APIConnectionError)
        logger.log(logging.WARNING if first_connection_failure else logging.DEBUG,
                   "%s; resubmitting the sample in %.1f s (same seq_id), for up to %.0f s", str(error), delay,
                   self.policy.window)
        if self.clock.sleep(delay, call.cancel):
            self.check_cancel(call)


def _past(clock: Clock, deadline: Optional[float]) -> bool:
    return deadline is not None and clock.monotonic() >= deadline


def decode_promise(response: Response) -> Union[SamplePromise, SampleResponse]:
    """asample's answer: a promise to poll, or (from servers that answer at once) the result."""
    body = response.json("asample answer")
    if isinstance(body, dict) and "sequences" in body and "request_id" not in body:
        return SampleResponse.from_json(body)
    return SamplePromise.from_json(body)
