"""The ``retrieve_future`` state machine (protocol.md 4.9): poll one promise until a final answer.

What a status means is :func:`tinkex._policy.classify`'s (phase ``POLL``); what a 200 body
means is decided by parsing it into the typed answers of :mod:`tinkex.types`
(:class:`TryAgainResponse`, :class:`CompleteMetadataResponse`,
:class:`RequestFailedResponse`, :class:`SampleResponse`). Everything the loop needs arrives
in a :class:`PollContext`, so unit tests run it over the in-memory transport and a virtual
clock.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from typing import Any, Callable, Mapping, Optional, Union

import attrs

from .._clock import Clock
from .._http import Abort, Response, Sender
from .._http.error_body import BODY_EXCERPT_CHARS
from .._policy import Action, Phase, PollPolicy, classify
from .._wire import codec
from .._wire.bounds import ResultBounds
from ..errors import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    RequestFailedError,
)
from ..types import (
    CompleteMetadataResponse,
    QueueState,
    RequestFailedResponse,
    SampleResponse,
    TryAgainResponse,
)
from .billing import BillingPause
from .future import Cancelled, Final

__all__ = ["PollContext", "poll_result", "parse_future_answer", "FutureAnswer", "check_declared_size"]

logger = logging.getLogger(__name__)

_ACCEPT = "application/x-protobuf, application/json"

FutureAnswer = Union[TryAgainResponse, CompleteMetadataResponse, RequestFailedResponse, SampleResponse]


@attrs.frozen
class PollContext:
    """What one poll loop needs besides the request id."""

    transport: Sender
    clock: Clock
    policy: PollPolicy
    stop: threading.Event
    cancel: threading.Event
    deadline: Optional[float]
    on_queue_state: Callable[[QueueState, Optional[str]], None]
    on_event: Callable[[str], None]
    reserve_bytes: Callable[[int], Any]
    billing_window: float = 3600.0
    abort: Optional[Abort] = None
    allow_metadata_only: bool = True  # False in poller mode once the size is known (protocol.md 4.10)
    watchdog: Callable[[], None] = lambda: None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    request_type: str = "Sample"
    bounds: ResultBounds = ResultBounds()  # what the request can produce (tinkex._wire.bounds)


@attrs.define
class _PollState:
    """One poll loop's counters. Not thread-safe: it lives on the loop's stack."""

    billing: BillingPause
    iteration: int = 0
    allow_metadata_only: bool = True
    errors_in_row: int = 0
    bad_requests: int = 0
    last_error: Optional[BaseException] = None


def poll_result(ctx: PollContext, request_id: str) -> SampleResponse:
    """Poll ``retrieve_future`` until a final answer, honouring deadline and cancellation.

    Raises:
        RequestFailedError: the server reported the request failed (wrapped in :class:`Final`).
        PromiseExpiredError: HTTP 410; the caller resubmits with a new seq_id.
        APITimeoutError: the deadline passed.
        Final: wraps an answer nothing may retry (a fatal status, a failed request).
    """
    state = _PollState(billing=BillingPause(ctx.billing_window, ctx.clock),
                       allow_metadata_only=ctx.allow_metadata_only)
    with ExitStack() as reservations:
        while True:
            _check_interrupts(ctx, request_id, state)
            started = ctx.clock.monotonic()
            try:
                response = _send_poll(ctx, request_id, state)
            except APITimeoutError as exc:
                if _deadline_passed(ctx):
                    raise _timeout(ctx, request_id, exc) from None
                _after_connection_error(ctx, state, exc)
                continue
            except APIConnectionError as exc:
                _after_connection_error(ctx, state, exc)
                continue
            result = _handle_answer(ctx, request_id, state, response, reservations)
            if result is not None:
                return result
            _pause(ctx, ctx.policy.floor - (ctx.clock.monotonic() - started))


def _check_interrupts(ctx: PollContext, request_id: str, state: _PollState) -> None:
    if ctx.cancel.is_set():
        raise Cancelled(request_id)
    if ctx.stop.is_set():
        raise ClientClosedError(f"the client closed while waiting for request {request_id}")
    if _deadline_passed(ctx):
        raise _timeout(ctx, request_id, state.last_error)
    ctx.watchdog()


def _deadline_passed(ctx: PollContext) -> bool:
    return ctx.deadline is not None and ctx.clock.monotonic() >= ctx.deadline


def _timeout(ctx: PollContext, request_id: str, last: Optional[BaseException]) -> APITimeoutError:
    ctx.on_event("timeout")
    detail = f" (last error: {last})" if last is not None else ""
    return APITimeoutError(
        f"Timed out waiting for request {request_id}{detail}", url=ctx.transport.url("retrieve_future"),
        request_id=request_id,
    )


def _pause(ctx: PollContext, seconds: float) -> None:
    if seconds > 0:
        if ctx.deadline is not None:
            seconds = min(seconds, max(ctx.deadline - ctx.clock.monotonic(), 0.0))
        ctx.clock.sleep(seconds, ctx.cancel)


def _send_poll(ctx: PollContext, request_id: str, state: _PollState) -> Response:
    headers = dict(ctx.headers)
    headers.update({
        "Accept": _ACCEPT,
        "X-Tinker-Request-Iteration": str(state.iteration),
        "X-Tinker-Request-Type": ctx.request_type,
        "X-Stainless-Raw-Response": "raw",
    })
    if state.iteration == 0:
        headers["X-Tinker-Create-Promise-Roundtrip-Time"] = "0.0"
    state.iteration += 1
    # FutureRetrieveRequest's JSON, written directly: this runs on every poll of every sample
    body = codec.dumps({"request_id": request_id, "allow_metadata_only": state.allow_metadata_only})
    return ctx.transport.request(
        "POST", "retrieve_future", body=body, read_timeout=ctx.policy.read_timeout,
        max_retries=0, headers=headers, deadline=ctx.deadline, check=False, abort=ctx.abort,
    )


def _after_connection_error(ctx: PollContext, state: _PollState, exc: BaseException) -> None:
    state.errors_in_row += 1
    state.last_error = exc
    ctx.on_event("poll_connection_error")
    _pause(ctx, ctx.policy.error_delay(state.errors_in_row))


def _handle_answer(
    ctx: PollContext, request_id: str, state: _PollState, response: Response, reservations: ExitStack
) -> Optional[SampleResponse]:
    action = classify(Phase.POLL, response.status, response.content)
    if action is Action.DONE:
        state.errors_in_row = 0
        return _handle_ok(ctx, request_id, state, response, reservations)
    error = ctx.transport.error_for(response)
    if action is Action.REPOLL_LATER:
        _after_connection_error(ctx, state, error)
    elif action is Action.REPOLL:
        state.last_error = error
        _report_queue_state(ctx, response)
        ctx.on_event(f"poll_{response.status}")
    elif action is Action.REPOLL_LIMITED:
        state.bad_requests += 1
        if state.bad_requests > ctx.policy.bad_request_repolls:
            raise Final(error)
        state.last_error = error
    elif action is Action.BILLING:
        state.billing.check(error)
        _pause(ctx, ctx.policy.billing_delay)
    elif action is Action.EXPIRED:
        raise error  # PromiseExpiredError: the whole-call layer resubmits with a new seq_id
    else:
        raise Final(error)  # the official SDK's ValueError: nothing retries it
    return None


def _report_queue_state(ctx: PollContext, response: Response) -> None:
    try:
        body = response.json("408 body")
    except DecodeError:
        return
    if isinstance(body, dict) and ("queue_state" in body or "queue_state_reason" in body):
        reason = body.get("queue_state_reason")
        ctx.on_queue_state(QueueState.parse(body.get("queue_state")), reason if isinstance(reason, str) else None)


def parse_future_answer(body: Any, request_id: str) -> FutureAnswer:
    """Which of the four answers a JSON ``retrieve_future`` body is (protocol.md 4.9).

    Example:
        >>> parse_future_answer({"type": "try_again", "queue_state": "paused_capacity"}, "r1")
        TryAgainResponse(request_id='r1', queue_state=<QueueState.PAUSED_CAPACITY: 'paused_capacity'>, \
queue_state_reason=None, type='try_again')
    """
    if not isinstance(body, dict):
        raise DecodeError(f"retrieve_future answered a JSON {type(body).__name__}, not an object")
    kind = body.get("type")
    if isinstance(kind, str) and kind.lower() == "try_again":
        return TryAgainResponse.from_json({**body, "request_id": body.get("request_id") or request_id})
    if body.get("status") == "complete_metadata":
        size = body.get("response_payload_size")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0
        return CompleteMetadataResponse(response_payload_size=size)
    if "error" in body and "sequences" not in body:
        return RequestFailedResponse.from_json({**body, "error": str(body.get("error"))})
    return SampleResponse.from_json(body)


def _handle_ok(
    ctx: PollContext, request_id: str, state: _PollState, response: Response, reservations: ExitStack
) -> Optional[SampleResponse]:
    if "application/x-protobuf" in response.content_type:
        return codec.decode_sample_result(response.content, response.content_type, ctx.bounds)
    ctx.bounds.check_json_size(len(response.content), "retrieve_future answer")
    body = response.json("retrieve_future answer")
    ctx.bounds.check_json_result(body, "retrieve_future answer")
    answer = parse_future_answer(body, request_id)
    if isinstance(answer, TryAgainResponse):
        # The official SDK warns on every try_again; at hundreds in flight that is noise, and
        # pauses already reach the observer, so it is a debug line here.
        logger.debug("Retrying request request_id=%r because of try_again", request_id)
        ctx.on_event("try_again")
        if answer.queue_state is not QueueState.UNKNOWN or answer.queue_state_reason is not None:
            ctx.on_queue_state(answer.queue_state, answer.queue_state_reason)
        return None
    if isinstance(answer, CompleteMetadataResponse):
        if not state.allow_metadata_only:  # a metadata answer to a poll that asked for the result
            raise DecodeError("retrieve_future answered complete_metadata to allow_metadata_only=false")
        check_declared_size(ctx.transport, request_id, answer.response_payload_size)
        if answer.response_payload_size > 0:
            reservations.enter_context(ctx.reserve_bytes(answer.response_payload_size))
        state.allow_metadata_only = False
        return None
    if isinstance(answer, RequestFailedResponse):
        raise Final(_failed(request_id, answer))
    return answer


def check_declared_size(transport: Sender, request_id: str, size: int) -> None:
    """A result declared larger than the client will read fails now, instead of holding the
    session's response-byte budget (and every other download) while it is fetched in vain.

    Raises:
        Final: wrapping a :class:`DecodeError` that names the size and ``max_response_bytes``.
    """
    limit = transport.max_response_bytes
    if size > limit:
        raise Final(DecodeError(
            f"retrieve_future declared a {size}-byte result for request {request_id}, over "
            f"max_response_bytes={limit}"
        ))


def _failed(request_id: str, answer: RequestFailedResponse) -> RequestFailedError:
    message = answer.error
    if len(message) > BODY_EXCERPT_CHARS:  # the server's text, capped like every other body excerpt
        message = message[:BODY_EXCERPT_CHARS] + "…"
    category = answer.category
    return RequestFailedError(
        f"Request failed: {message} for request_id={request_id!r} (category {category.value})",
        request_id=request_id, category=category.value,
    )

