"""Every row of protocol.md's answer tables (4.9 and 7.2), asked of the one status table."""

from __future__ import annotations

from typing import Dict

import pytest

from tinkex._policy import Action, Phase, SubmitPolicy, classify, retries_whole_call
from tinkex.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PromiseExpiredError,
    RateLimitError,
    RequestFailedError,
    ValidationError,
)

BODY = b'{"detail": "x"}'
EMPTY = b""

# (phase, status, body) -> action: protocol.md 7.2 column by column, then 4.9's extra rows.
ROWS = [
    # asample (layer 2)
    (Phase.SUBMIT, 200, BODY, Action.DONE),
    (Phase.SUBMIT, 400, EMPTY, Action.RETRY),  # proxy rejection: a connection error, resent
    (Phase.SUBMIT, 400, BODY, Action.RAISE),
    (Phase.SUBMIT, 401, BODY, Action.RAISE),
    (Phase.SUBMIT, 403, BODY, Action.RAISE),
    (Phase.SUBMIT, 404, BODY, Action.RAISE),
    (Phase.SUBMIT, 422, BODY, Action.RAISE),
    (Phase.SUBMIT, 402, BODY, Action.BILLING),
    (Phase.SUBMIT, 408, BODY, Action.RETRY),
    (Phase.SUBMIT, 409, BODY, Action.RETRY),
    (Phase.SUBMIT, 410, BODY, Action.RAISE),
    (Phase.SUBMIT, 429, BODY, Action.BACKOFF),
    (Phase.SUBMIT, 500, BODY, Action.RETRY),
    (Phase.SUBMIT, 503, EMPTY, Action.RETRY),
    # retrieve_future (layer 3)
    (Phase.POLL, 200, BODY, Action.DONE),
    (Phase.POLL, 400, EMPTY, Action.REPOLL_LATER),
    (Phase.POLL, 400, BODY, Action.REPOLL_LIMITED),
    (Phase.POLL, 401, BODY, Action.FATAL),
    (Phase.POLL, 403, BODY, Action.FATAL),
    (Phase.POLL, 404, BODY, Action.FATAL),
    (Phase.POLL, 422, BODY, Action.FATAL),
    (Phase.POLL, 402, BODY, Action.BILLING),
    (Phase.POLL, 408, BODY, Action.REPOLL),
    (Phase.POLL, 409, BODY, Action.FATAL),  # not layer 2's 409: the official SDK's ValueError
    (Phase.POLL, 410, BODY, Action.EXPIRED),
    (Phase.POLL, 429, BODY, Action.REPOLL_LATER),
    (Phase.POLL, 500, BODY, Action.REPOLL),
    (Phase.POLL, 502, EMPTY, Action.REPOLL),
    # retrieve_futures (poller mode)
    (Phase.FUTURES, 400, EMPTY, Action.RETRY),
    (Phase.FUTURES, 400, BODY, Action.REPOLL_LIMITED),
    (Phase.FUTURES, 401, BODY, Action.FATAL),
    (Phase.FUTURES, 404, BODY, Action.FATAL),
    (Phase.FUTURES, 402, BODY, Action.BILLING),
    (Phase.FUTURES, 408, BODY, Action.RETRY),
    (Phase.FUTURES, 409, BODY, Action.RETRY),
    (Phase.FUTURES, 410, BODY, Action.FATAL),
    (Phase.FUTURES, 429, BODY, Action.RETRY),
    (Phase.FUTURES, 503, BODY, Action.RETRY),
    # heartbeat
    (Phase.HEARTBEAT, 200, BODY, Action.DONE),
    (Phase.HEARTBEAT, 410, BODY, Action.STOP),
    (Phase.HEARTBEAT, 500, BODY, Action.RAISE),
    (Phase.HEARTBEAT, 404, BODY, Action.RAISE),
    # other session calls (layer 1)
    (Phase.HTTP, 201, BODY, Action.DONE),
    (Phase.HTTP, 400, EMPTY, Action.RETRY),
    (Phase.HTTP, 400, BODY, Action.RAISE),
    (Phase.HTTP, 401, BODY, Action.RAISE),
    (Phase.HTTP, 402, BODY, Action.RAISE),
    (Phase.HTTP, 404, BODY, Action.RAISE),
    (Phase.HTTP, 408, BODY, Action.RETRY),
    (Phase.HTTP, 409, BODY, Action.RETRY),
    (Phase.HTTP, 410, BODY, Action.RAISE),
    (Phase.HTTP, 429, BODY, Action.RETRY),
    (Phase.HTTP, 500, BODY, Action.RETRY),
    (Phase.HTTP, 599, BODY, Action.RETRY),
    # is the session still known?
    (Phase.SESSION_CHECK, 404, BODY, Action.FORGOTTEN),
    (Phase.SESSION_CHECK, 410, BODY, Action.FORGOTTEN),
    (Phase.SESSION_CHECK, 500, BODY, Action.RAISE),
]


@pytest.mark.parametrize("phase, status, body, action", ROWS,
                         ids=[f"{p.value}-{s}-{'bare' if not b else 'body'}" for p, s, b, _ in ROWS])
def test_the_table_row(phase: Phase, status: int, body: bytes, action: Action) -> None:
    assert classify(phase, status, body) is action


@pytest.mark.parametrize("headers, status, action", [
    ({"x-should-retry": "true"}, 400, Action.RETRY),
    ({"x-should-retry": "TRUE"}, 404, Action.RETRY),
    ({"x-should-retry": "false"}, 503, Action.RAISE),
    ({"x-should-retry": "maybe"}, 503, Action.RETRY),
])
def test_x_should_retry_overrides_the_http_layer(headers: Dict[str, str], status: int, action: Action) -> None:
    assert classify(Phase.HTTP, status, BODY, headers) is action


def test_a_whitespace_body_is_bare() -> None:
    assert classify(Phase.POLL, 400, b" \r\n") is Action.REPOLL_LATER


@pytest.mark.parametrize("error, retried", [
    (APIConnectionError("x", url="u"), True),
    (APITimeoutError("x", url="u"), True),
    (PromiseExpiredError("x", status_code=410), True),
    (RateLimitError("x", status_code=429), True),
    (ConflictError("x", status_code=409), True),
    (InternalServerError("x", status_code=503), True),
    (BadRequestError("x", status_code=400), False),
    (NotFoundError("x", status_code=404), False),
    (RequestFailedError("x", request_id="r", category="user"), False),
    (ValidationError("x", field="f", value=1), False),
])
def test_what_the_whole_call_layer_retries(error: Exception, retried: bool) -> None:
    assert retries_whole_call(error) is retried


def test_submit_policy_delays_and_backoff() -> None:
    policy = SubmitPolicy()
    assert [policy.resend_delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.backoff_for(128 * 1024) == 1.0
    assert policy.backoff_for(128 * 1024 + 1) == 5.0
