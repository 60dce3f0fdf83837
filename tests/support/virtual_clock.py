"""A purely virtual clock for unit tests of the retry and poll loops: sleeping takes no time."""

from __future__ import annotations

import threading
from typing import Any, List

from tinkex._clock import Clock


class VirtualClock:
    """Time that only moves when the code under test sleeps; every sleep is recorded.

    Thread-safety: one lock guards the time and the record.
    """

    def __init__(self, random: float = 0.5) -> None:
        self._lock = threading.Lock()
        self.now = 1000.0
        self.sleeps: List[float] = []
        self._random = random

    def monotonic(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float, stop: Any = None) -> bool:
        with self._lock:
            self.sleeps.append(round(seconds, 6))
            self.now += max(seconds, 0.0)
        return bool(stop is not None and stop.is_set())

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def clock(self) -> Clock:
        return Clock(monotonic=self.monotonic, wall=lambda: self.monotonic(), random=lambda: self._random,
                     sleeper=self.sleep)
