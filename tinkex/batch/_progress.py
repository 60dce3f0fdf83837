"""Progress of a batch: a tqdm bar when installed, else a periodic INFO log line.

``make_progress(None, ...)`` shows progress only when stderr is a terminal; ``True`` asks for
it anywhere (a bar if ``tqdm`` is installed, else the log line), ``"bar"`` and ``"log"`` pick
one, ``False`` turns it off, and any object with ``update(failed)`` and ``close()`` is used as
the reporter itself. Both built-in kinds report count, rate, ETA (when the total is known)
and failures.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Union

from ..errors import ValidationError

if TYPE_CHECKING:
    from typing import TypeGuard  # Python 3.10+; annotations only, so 3.9 runs this module

__all__ = ["Progress", "ProgressSpec", "check_spec", "wants_progress", "make_progress", "LazyProgress", "NoProgress",
           "LogProgress", "TqdmProgress"]

logger = logging.getLogger(__name__)

ProgressSpec = Union[None, bool, str, Any]
LOG_INTERVAL = 10.0


class Progress(Protocol):
    """What a batch reports to: one update per finished prompt, then close."""

    def update(self, failed: bool) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    """Reports nothing."""

    def update(self, failed: bool) -> None:
        pass

    def close(self) -> None:
        pass


class LogProgress:
    """Logs ``done/total, failures, rate, ETA`` at INFO at most once per ``interval`` seconds.

    Not thread-safe: one batch, one consuming thread.

    Example:
        >>> progress = LogProgress(total=2, interval=0.0)
        >>> progress.update(failed=False); progress.close()
    """

    def __init__(self, total: Optional[int], *, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._total = total
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_log = self._started
        self.done = 0
        self.failed = 0

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = self._clock()
        if now - self._last_log >= self._interval:
            self._last_log = now
            logger.info("%s", self.describe(now))

    def describe(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        total = f"/{self._total}" if self._total is not None else ""
        line = f"batch: {self.done}{total} done, {self.failed} failed, {rate:.1f}/s"
        if self._total is not None and rate > 0:
            line += f", ETA {max(self._total - self.done, 0) / rate:.0f}s"
        return line

    def close(self) -> None:
        if self.done:
            logger.info("%s (finished)", self.describe(self._clock()))


class TqdmProgress:
    """A tqdm bar on stderr with a ``failed=`` postfix that changes only when failures do.

    Not thread-safe: one batch, one consuming thread.
    """

    def __init__(self, total: Optional[int], tqdm_class: Any) -> None:
        self._bar = tqdm_class(total=total, unit="prompt", desc="batch", file=sys.stderr, dynamic_ncols=True)
        self._failed = 0

    def update(self, failed: bool) -> None:
        if failed:
            self._failed += 1
            self._bar.set_postfix(failed=self._failed, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def _tqdm_class() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _stderr_is_tty() -> bool:
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def _is_reporter(spec: object) -> TypeGuard[Progress]:
    return callable(getattr(spec, "update", None)) and callable(getattr(spec, "close", None))


def check_spec(spec: Any) -> ProgressSpec:
    """Return ``spec`` if it is a valid progress choice, else raise ``ValidationError``."""
    if spec is None or isinstance(spec, bool) or (isinstance(spec, str) and spec in ("bar", "log")):
        return spec
    if _is_reporter(spec):
        return spec
    raise ValidationError(f"progress must be None, a bool, 'bar' or 'log', got {spec!r}", field="progress",
                          value=spec)


def wants_progress(spec: ProgressSpec) -> bool:
    """Whether ``spec`` shows progress here (None: only when stderr is a terminal)."""
    spec = check_spec(spec)
    return _stderr_is_tty() if spec is None else spec is not False


class LazyProgress:
    """Builds its reporter on the first update, so a batch that never starts shows nothing.

    Not thread-safe: one batch, one consuming thread.
    """

    def __init__(self, spec: ProgressSpec, total: Optional[int]) -> None:
        self._spec = check_spec(spec)  # a bad spec fails now, not mid-batch
        self._total = total
        self._inner: Optional[Progress] = None

    def update(self, failed: bool) -> None:
        if self._inner is None:
            self._inner = make_progress(self._spec, self._total)
        self._inner.update(failed)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def make_progress(spec: ProgressSpec, total: Optional[int]) -> Progress:
    """Build the progress reporter ``spec`` asks for (see the module docstring)."""
    if not wants_progress(spec):
        return NoProgress()
    if _is_reporter(spec):
        return spec
    tqdm_class = _tqdm_class() if spec != "log" else None
    if tqdm_class is not None:
        return TqdmProgress(total, tqdm_class)
    if spec == "bar":
        logger.info("tqdm is not installed (pip install 'tinkex[progress]'); logging progress instead")
    return LogProgress(total)
