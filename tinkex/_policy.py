"""The status table and the retry/poll/submit policies: every "what now?" of the client in one place.

The protocol (protocol.md 4.9, 7.1-7.6) answers one question in four places: given the
phase of a call and the server's answer, what does the client do next? :func:`classify`
is that answer, one row per (phase, status); the loops in :mod:`tinkex._http` and
:mod:`tinkex._sampling` only carry out the :class:`Action` it returns. Status codes appear as
numbers here and in :mod:`tinkex.errors`, nowhere else in the client.

Layers, innermost first (protocol.md 7.1):

========  ===========================================  ================================
phase     what is resent                               policy
========  ===========================================  ================================
HTTP      one call, same idempotency key               :class:`HTTPRetryPolicy`
SUBMIT    asample / stream_sample, same ``seq_id``     :class:`SubmitPolicy`
POLL      retrieve_future, until a final answer        :class:`PollPolicy`
(whole)   the whole sample, a new ``seq_id``           :class:`RetryConfig`, :func:`retries_whole_call`
========  ===========================================  ================================

Policies are immutable; derive variants with ``attrs.evolve``.
"""

from __future__ import annotations

import email.utils
import enum
import logging
from typing import Any, Mapping, Optional

import attrs

from ._clock import Clock
from .errors import (
    APIConnectionError,
    APIStatusError,
    PromiseExpiredError,
    ValidationError,
)

__all__ = [
    "Action",
    "HTTPRetryPolicy",
    "Phase",
    "PollPolicy",
    "RetryConfig",
    "RETRIEVE_READ_TIMEOUT",
    "SubmitPolicy",
    "classify",
    "is_bare_400",
    "is_user_error_status",
    "parse_retry_after",
    "retries_whole_call",
]

logger = logging.getLogger(__name__)

# -- the status table --------------------------------------------------------------------------

_TRANSIENT = frozenset({408, 409, 429})  # plus every 5xx: what layers 1, 2 and the whole call retry
_GONE = frozenset({404, 410})  # a session the server no longer knows


class Phase(enum.Enum):
    """Which call an answer belongs to; each has its own row set in :func:`classify`."""

    HTTP = "http"  # layer 1: control calls made with HTTP-layer retries
    SUBMIT = "submit"  # layer 2: asample and stream_sample, resent with the same seq_id
    POLL = "poll"  # layer 3: retrieve_future
    FUTURES = "futures"  # layer 3 in poller mode: retrieve_futures
    HEARTBEAT = "heartbeat"  # session_heartbeat
    SESSION_CHECK = "session_check"  # does the server still know this session?


class Action(enum.Enum):
    """What the loop does next with an answer."""

    DONE = "done"  # a 2xx: hand the answer on
    RETRY = "retry"  # send the same call again after the phase's delay
    BACKOFF = "backoff"  # 429 on submit: holder-wide backoff, then resend the same seq_id
    BILLING = "billing"  # 402: the billing pause, within its window
    REPOLL = "repoll"  # poll again at once (the server holds polls open)
    REPOLL_LATER = "repoll_later"  # poll again after min(2^k, cap)
    REPOLL_LIMITED = "repoll_limited"  # a 400 with a body: a few re-polls, then fatal
    EXPIRED = "expired"  # 410 on a poll: the whole sample is resubmitted with a new seq_id
    RAISE = "raise"  # raise the typed error; the whole-call layer decides on retrying it
    FATAL = "fatal"  # raise the typed error; nothing retries it
    STOP = "stop"  # the session is over (heartbeat 410)
    FORGOTTEN = "forgotten"  # the server no longer knows the session


def is_bare_400(status: int, body: bytes) -> bool:
    """A 400 with an empty body: a proxy rejection, treated as a connection error (7.2)."""
    return status == 400 and not body.strip()


def _is_transient(status: int) -> bool:
    return status in _TRANSIENT or status >= 500


def classify(phase: Phase, status: int, body: bytes = b"", headers: Optional[Mapping[str, str]] = None) -> Action:
    """The table of protocol.md 4.9 and 7.2: what the client does with ``status`` in ``phase``.

    Args:
        phase: which call answered.
        status: its HTTP status.
        body: its body (only emptiness matters: a bare 400 is a proxy rejection).
        headers: its headers (``x-should-retry`` overrides the HTTP layer's rule).

    Example:
        >>> classify(Phase.SUBMIT, 429), classify(Phase.POLL, 410), classify(Phase.POLL, 409)
        (<Action.BACKOFF: 'backoff'>, <Action.EXPIRED: 'expired'>, <Action.FATAL: 'fatal'>)
    """
    if 200 <= status < 300:
        return Action.DONE
    return _ROWS[phase](status, is_bare_400(status, body), headers or {})


def _http_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    if bare:  # a proxy rejection is a connection error, whatever x-should-retry says
        return Action.RETRY
    should = (headers.get("x-should-retry") or "").lower()
    if should in ("true", "false"):
        return Action.RETRY if should == "true" else Action.RAISE
    return Action.RETRY if _is_transient(status) else Action.RAISE


def _submit_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    if status == 429:
        return Action.BACKOFF
    if status == 402:
        return Action.BILLING
    return Action.RETRY if bare or _is_transient(status) else Action.RAISE


def _poll_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    if bare or status == 429:
        return Action.REPOLL_LATER
    if status == 408 or status >= 500:
        return Action.REPOLL
    if status == 400:
        return Action.REPOLL_LIMITED
    if status == 402:
        return Action.BILLING
    if status == 410:
        return Action.EXPIRED
    return Action.FATAL  # 401, 403, 404, 409, 422 ...: the official SDK's ValueError


def _futures_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    if bare or _is_transient(status):
        return Action.RETRY
    if status == 400:
        return Action.REPOLL_LIMITED
    return Action.BILLING if status == 402 else Action.FATAL


def _heartbeat_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    return Action.STOP if status == 410 else Action.RAISE


def _session_check_row(status: int, bare: bool, headers: Mapping[str, str]) -> Action:
    return Action.FORGOTTEN if status in _GONE else Action.RAISE


_ROWS = {
    Phase.HTTP: _http_row,
    Phase.SUBMIT: _submit_row,
    Phase.POLL: _poll_row,
    Phase.FUTURES: _futures_row,
    Phase.HEARTBEAT: _heartbeat_row,
    Phase.SESSION_CHECK: _session_check_row,
}


def is_user_error_status(status: int) -> bool:
    """Whether an answer blames the caller (telemetry's ``user_error``, protocol.md 7.9): a 4xx but 408."""
    return 400 <= status < 500 and status != 408


def retries_whole_call(exc: BaseException) -> bool:
    """What the whole-call layer (protocol.md 7.1 layer 4) retries with a new seq_id.

    Connection errors and timeouts, a 410 from a poll, and 408/409/429/5xx that escaped the
    inner layers. Not: a request that failed on the server, other 4xx, decoding errors.
    """
    if isinstance(exc, (APIConnectionError, PromiseExpiredError)):
        return True
    return isinstance(exc, APIStatusError) and _is_transient(exc.status_code)


def parse_retry_after(headers: Mapping[str, str], now: float) -> Optional[float]:
    """Seconds asked for by ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    Args:
        headers: response headers (case-insensitive mapping).
        now: the current wall-clock time, for HTTP dates.

    Returns:
        The delay in seconds, or None when absent or unreadable.
    """
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return float(raw_ms) / 1000.0
        except ValueError:
            logger.debug("Unsupported retry-after-ms format: %s", raw_ms)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        logger.debug("Unsupported Retry-After format: %s. Using the default delay.", raw)
        return None
    return when.timestamp() - now


@attrs.frozen
class HTTPRetryPolicy:
    """The HTTP layer: resend one call up to ``max_retries`` times.

    Delay: a server-given Retry-After in (0, ``max_retry_after``], else
    ``min(base · 2^n, cap)`` scaled by a uniform factor in (0.75, 1.0].

    Example:
        >>> policy = HTTPRetryPolicy()
        >>> policy.delay(0, {}, Clock(random=lambda: 0.0))
        0.5
    """

    max_retries: int = 10
    base: float = 0.5
    cap: float = 10.0
    max_retry_after: float = 60.0

    def delay(self, retries_taken: int, headers: Mapping[str, str], clock: Clock) -> float:
        asked = parse_retry_after(headers, clock.wall())
        if asked is not None and 0 < asked <= self.max_retry_after:
            return asked
        backoff = min(self.base * (2 ** min(retries_taken, 30)), self.cap)
        return float(backoff * (1.0 - 0.25 * clock.random()))


def _check_positive(_instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValidationError(f"{attribute.name} must be positive, got {value!r}", field=attribute.name,
                              value=value)


def _check_fraction(_instance: Any, attribute: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValidationError(f"{attribute.name} must be in [0, 1], got {value!r}", field=attribute.name,
                              value=value)


def _check_optional_count(_instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValidationError(f"{attribute.name} must be None or a non-negative int, got {value!r}",
                              field=attribute.name, value=value)


@attrs.frozen
class RetryConfig:
    """Whole-call retries around ``sample`` and ``compute_logprobs``.

    Args:
        max_connections: in-flight samples per client (the server's
            ``sample_max_concurrent_requests`` overrides it).
        progress_timeout: seconds without any completed request before in-flight calls are
            failed as stuck.
        retry_delay_base: first delay in seconds.
        retry_delay_max: the delay cap in seconds.
        jitter_factor: uniform jitter of ± this fraction.
        enable_retry_logic: False turns this layer off.
        enable_stuck_detection: False turns the progress watchdog off.
        max_retries: None for no limit (the official SDK's behaviour).

    Example:
        >>> RetryConfig().delay(1, Clock(random=lambda: 0.5))
        0.5
    """

    max_connections: Optional[int] = attrs.field(default=None, validator=_check_optional_count)
    progress_timeout: float = attrs.field(default=7200.0, validator=_check_positive)
    retry_delay_base: float = attrs.field(default=0.5, validator=_check_positive)
    retry_delay_max: float = attrs.field(default=10.0, validator=_check_positive)
    jitter_factor: float = attrs.field(default=0.25, validator=_check_fraction)
    enable_retry_logic: bool = True
    enable_stuck_detection: bool = True
    max_retries: Optional[int] = attrs.field(default=None, validator=_check_optional_count)

    def __attrs_post_init__(self) -> None:
        if self.retry_delay_max < self.retry_delay_base:
            raise ValidationError(
                f"retry_delay_max must be >= retry_delay_base, got {self.retry_delay_max!r}",
                field="retry_delay_max", value=self.retry_delay_max,
            )

    def delay(self, attempt: int, clock: Clock) -> float:
        """Delay before retry number ``attempt`` (1-based), jittered and clamped to [0, max]."""
        capped = min(self.retry_delay_base * (2 ** min(max(attempt - 1, 0), 30)), self.retry_delay_max)
        jitter = capped * self.jitter_factor * (2.0 * clock.random() - 1.0)
        return float(min(max(capped + jitter, 0.0), self.retry_delay_max))

    def allows(self, attempt: int) -> bool:
        """Whether retry number ``attempt`` (1-based) may run."""
        return self.enable_retry_logic and (self.max_retries is None or attempt <= self.max_retries)


RETRIEVE_READ_TIMEOUT = 45.0


@attrs.frozen
class PollPolicy:
    """How to pace ``retrieve_future`` polls.

    The official SDK re-polls try_again, 408 and 5xx at once and relies on the server holding
    the poll; tinkex waits at least ``floor`` seconds after an answer that came back faster
    than that, so a misbehaving server never sees a busy loop. ``floor=0`` gives parity.

    Example:
        >>> PollPolicy().error_delay(3)
        4.0
    """

    floor: float = 0.1
    error_base: float = 1.0
    error_cap: float = 30.0
    billing_delay: float = 5.0
    #: The longest billing pause of one incident, submit and poll alike; None (the default)
    #: takes the server's ``billing_exception_max_pause_duration_sec`` (3600 s).
    billing_window: Optional[float] = None
    bad_request_repolls: int = 3
    read_timeout: float = RETRIEVE_READ_TIMEOUT

    def error_delay(self, consecutive: int) -> float:
        """Delay after the ``consecutive``-th 429 or connection error in a row (1-based)."""
        return float(min(self.error_base * 2 ** min(max(consecutive - 1, 0), 30), self.error_cap))


@attrs.frozen
class SubmitPolicy:
    """How asample / stream_sample are resent with the same ``seq_id`` (protocol.md 4.8, 7.1 layer 2, 7.4, 7.6).

    Transient answers (408/409/5xx, a bare 400, connection errors) are resent after
    ``min(base · 2^(n-1), cap)`` seconds, without jitter, until the next pause would end more
    than ``window`` seconds after the first send. The official SDK's window is 300 s; tinkex's
    is 60 s, so a sample against a host that refuses connections fails after about 30 s
    (pauses of 1, 2, 4, 8, 16 s) with an ``APIConnectionError`` that the whole-call layer does
    not retry, instead of five minutes of silence. A 5xx that outlasts the window still goes
    to the whole-call layer, which retries it with a new ``seq_id``.

    A 429 makes every submit of the session wait ``backoff_small`` (or
    ``backoff_large`` for a request over ``large_request_bytes``); a 402 waits
    ``billing_delay`` per try within the billing window.

    Example:
        >>> [SubmitPolicy().resend_delay(n) for n in (1, 2, 3, 6, 7)]
        [1.0, 2.0, 4.0, 30.0, 30.0]
    """

    window: float = 60.0
    base: float = 1.0
    cap: float = 30.0
    large_request_bytes: int = 128 * 1024
    backoff_small: float = 1.0
    backoff_large: float = 5.0
    billing_delay: float = 5.0

    def resend_delay(self, failures: int) -> float:
        """Delay before resend number ``failures`` (1-based)."""
        return min(self.base * 2.0 ** min(max(failures - 1, 0), 30), self.cap)

    def backoff_for(self, estimated_bytes: int) -> float:
        """The session-wide pause after a 429 for a request of ``estimated_bytes``."""
        return self.backoff_small if estimated_bytes <= self.large_request_bytes else self.backoff_large
