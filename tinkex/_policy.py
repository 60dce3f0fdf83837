"""Retry policies and their delay maths, with time and randomness injected.

Two layers use these (protocol.md 7.1): the HTTP layer (:class:`HTTPRetryPolicy`, one logical
call resent with the same idempotency key) and the whole-call layer around ``sample`` and
``compute_logprobs`` (:class:`RetryConfig`, a new ``seq_id`` per attempt). Policies are
immutable; derive variants with ``attrs.evolve``.
"""

from __future__ import annotations

import email.utils
import logging
from typing import Any, Mapping, Optional

import attrs

from ._clock import Clock
from .errors import ValidationError

__all__ = ["HTTPRetryPolicy", "PollPolicy", "RetryConfig", "RETRIEVE_READ_TIMEOUT", "parse_retry_after"]

logger = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 429})


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


def is_retryable_status(status: int, headers: Mapping[str, str]) -> bool:
    """The HTTP layer's rule: 408, 409, 429, 5xx, or ``x-should-retry`` says so."""
    should = (headers.get("x-should-retry") or "").lower()
    if should == "true":
        return True
    if should == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


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
        return backoff * (1.0 - 0.25 * clock.random())


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
        return min(max(capped + jitter, 0.0), self.retry_delay_max)

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
    billing_window: float = 3600.0
    bad_request_repolls: int = 3
    read_timeout: float = RETRIEVE_READ_TIMEOUT

    def error_delay(self, consecutive: int) -> float:
        """Delay after the ``consecutive``-th 429 or connection error in a row (1-based)."""
        return min(self.error_base * 2 ** min(max(consecutive - 1, 0), 30), self.error_cap)
