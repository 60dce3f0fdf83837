"""The billing pause (protocol.md 7.6), shared by the submit and the poll loops.

A 402 means "your account cannot run this now": the client keeps trying every few seconds
for up to the billing window (the server's ``billing_exception_max_pause_duration_sec``,
3600 s by default), warns at most once a minute, and gives up with the 402's error after that.
"""

from __future__ import annotations

import logging
from typing import Optional

from .._clock import Clock
from ..errors import APIStatusError

__all__ = ["BillingPause", "WARN_EVERY"]

logger = logging.getLogger(__name__)

WARN_EVERY = 60.0


class BillingPause:
    """One call's billing incident: when it started and when it last warned.

    Not thread-safe: each call loop has its own.

    Example:
        >>> from tinkex._clock import Clock
        >>> pause = BillingPause(window=10.0, clock=Clock(monotonic=lambda: 0.0))
        >>> pause.check(APIStatusError("Error code: 402", status_code=402))  # within the window: no raise
    """

    def __init__(self, window: float, clock: Clock) -> None:
        self._window = window
        self._clock = clock
        self._since: Optional[float] = None
        self._warned: Optional[float] = None

    def check(self, error: APIStatusError) -> None:
        """Note one more 402; raise ``error`` once the incident has outlasted the window."""
        now = self._clock.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since > self._window:
            logger.error("The job was paused due to billing status for %.0f seconds. This has been happening for "
                         "too long. Aborting.", now - self._since)
            raise error
        if self._warned is None or now - self._warned >= WARN_EVERY:
            self._warned = now
            logger.warning("The job is paused due to billing status. Error: %s", error.body)
