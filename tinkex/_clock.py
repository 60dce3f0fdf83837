"""The injectable clock: time and randomness, so retry and poll maths is tested without sleeping."""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Optional

import attrs

__all__ = ["Clock", "SYSTEM_CLOCK"]


@attrs.frozen
class Clock:
    """Time and randomness, injectable so retry maths is tested without sleeping.

    ``sleep(seconds, stop)`` returns True if ``stop`` (a ``threading.Event``) was set first.
    """

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    random: Callable[[], float] = random.random
    sleeper: Optional[Callable[[float, Optional[threading.Event]], bool]] = None

    def sleep(self, seconds: float, stop: Optional[threading.Event] = None) -> bool:
        if self.sleeper is not None:
            return self.sleeper(seconds, stop)
        if seconds <= 0:
            return bool(stop is not None and stop.is_set())
        if stop is None:
            time.sleep(seconds)
            return False
        return bool(stop.wait(seconds))


SYSTEM_CLOCK = Clock()
