"""The ``retrieve_future`` state machine (protocol.md 4.9)."""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack
from typing import Any, Callable, Mapping, Optional, TypeVar

import attrs

from .._clock import Clock
from .._http.transport import BODY_EXCERPT_CHARS, Response, Transport, is_bare_400
from .._policy import PollPolicy
from .._wire import codec as _codec
from ..errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    RequestFailedError,
)
from ..types import QueueState, RequestErrorCategory, SampleResponse
from .future import Cancelled

__all__ = ["PollContext", "poll_result"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_ACCEPT = "application/x-protobuf, application/json"


@attrs.define
class _PollState:
    iteration: int = 0
    allow_metadata_only: bool = True
    errors_in_row: int = 0
    bad_requests: int = 0
    billing_since: Optional[float] = None
    last_error: Optional[BaseException] = None


@attrs.frozen
class PollContext:
    """What one poll loop needs besides the request id."""

    transport: Transport
    clock: Clock
    policy: PollPolicy
    stop: threading.Event
    cancel: threading.Event
    deadline: Optional[float]
    on_queue_state: Callable[[QueueState, Optional[str]], None]
    on_event: Callable[[str], None]
    reserve_bytes: Callable[[int], Any]
    watchdog: Callable[[], None] = lambda: None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    request_type: str = "Sample"


def poll_result(ctx: PollContext, request_id: str) -> SampleResponse:
    """Poll ``retrieve_future`` until a final answer, honouring deadline and cancellation.

    Raises:
        RequestFailedError: the server reported the request failed (not retried).
        PromiseExpiredError: HTTP 410; the caller resubmits with a new seq_id.
        APITimeoutError: the deadline passed.
        APIStatusError: a fatal status.
    """
    state = _PollState()
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
    body = {"request_id": request_id, "allow_metadata_only": state.allow_metadata_only}
    return ctx.transport.request(
        "POST", "retrieve_future", body=body, read_timeout=ctx.policy.read_timeout,
        max_retries=0, headers=headers, deadline=ctx.deadline, check=False,
    )


def _after_connection_error(ctx: PollContext, state: _PollState, exc: BaseException) -> None:
    state.errors_in_row += 1
    state.last_error = exc
    ctx.on_event("poll_connection_error")
    _pause(ctx, ctx.policy.error_delay(state.errors_in_row))


def _handle_answer(
    ctx: PollContext, request_id: str, state: _PollState, response: Response, reservations: ExitStack
) -> Optional[SampleResponse]:
    status = response.status
    if status == 200:
        state.errors_in_row = 0
        return _handle_ok(ctx, request_id, state, response, reservations)
    if is_bare_400(response) or status == 429:
        _after_connection_error(ctx, state, ctx.transport.error_for(response))
        return None
    if status == 408 or status >= 500:
        state.last_error = ctx.transport.error_for(response)
        _report_queue_state(ctx, response)
        ctx.on_event(f"poll_{status}")
        return None
    if status == 400:
        _handle_bad_request(ctx, state, response)
        return None
    if status == 402:
        _handle_billing(ctx, state, response)
        return None
    raise _fatal(ctx.transport.error_for(response))


def _fatal(error: APIStatusError) -> APIStatusError:
    """Mark a poll error the whole-call layer must not retry (the official SDK's ValueError)."""
    error.fatal = True
    return error


def _handle_bad_request(ctx: PollContext, state: _PollState, response: Response) -> None:
    state.bad_requests += 1
    if state.bad_requests > ctx.policy.bad_request_repolls:
        raise _fatal(ctx.transport.error_for(response))
    state.last_error = ctx.transport.error_for(response)


def _handle_billing(ctx: PollContext, state: _PollState, response: Response) -> None:
    now = ctx.clock.monotonic()
    if state.billing_since is None:
        state.billing_since = now
    if now - state.billing_since > ctx.policy.billing_window:
        raise ctx.transport.error_for(response)
    logger.warning("The job is paused due to billing status. Error: %s", ctx.transport.error_for(response).body)
    _pause(ctx, ctx.policy.billing_delay)


def _report_queue_state(ctx: PollContext, response: Response) -> None:
    try:
        body = response.json("408 body")
    except DecodeError:
        return
    if isinstance(body, dict) and ("queue_state" in body or "queue_state_reason" in body):
        reason = body.get("queue_state_reason")
        ctx.on_queue_state(QueueState.parse(body.get("queue_state")), reason if isinstance(reason, str) else None)


def _handle_ok(
    ctx: PollContext, request_id: str, state: _PollState, response: Response, reservations: ExitStack
) -> Optional[SampleResponse]:
    if "application/x-protobuf" in response.content_type:
        return _codec.decode_sample_result(response.content, response.content_type)
    body = response.json("retrieve_future answer")
    if not isinstance(body, dict):
        raise DecodeError(f"retrieve_future answered a JSON {type(body).__name__}, not an object")
    kind = body.get("type")
    if isinstance(kind, str) and kind.lower() == "try_again":
        # The official SDK warns on every try_again; at hundreds in flight that is noise, and
        # pauses already reach the observer, so it is a debug line here.
        logger.debug("Retrying request request_id=%r because of try_again", request_id)
        ctx.on_event("try_again")
        if "queue_state" in body or "queue_state_reason" in body:
            reason = body.get("queue_state_reason")
            ctx.on_queue_state(QueueState.parse(body.get("queue_state")), reason if isinstance(reason, str) else None)
        return None
    if body.get("status") == "complete_metadata" and state.allow_metadata_only:
        size = body.get("response_payload_size")
        if isinstance(size, int) and size > 0:
            reservations.enter_context(ctx.reserve_bytes(size))
        state.allow_metadata_only = False
        return None
    if "error" in body and "sequences" not in body:
        raise _failed(request_id, body)
    return SampleResponse.from_json(body)


def _failed(request_id: str, body: Mapping[str, Any]) -> RequestFailedError:
    category = RequestErrorCategory.parse(body.get("category"))
    message = str(body.get("error"))
    if len(message) > BODY_EXCERPT_CHARS:  # the server's text, capped like every other body excerpt
        message = message[:BODY_EXCERPT_CHARS] + "…"
    return RequestFailedError(
        f"Request failed: {message} for request_id={request_id!r} (category {category.value})",
        request_id=request_id, category=category.value,
    )

