"""Admission limits on the submit path: count slots, the byte budget and the 429 backoff gate.

protocol.md 7.4/7.5. One set of these belongs to each ServiceClient (the official SDK's
"holder"), so every SamplingClient of one ServiceClient shares them (client_behaviour M18).
Every blocking wait is a real ``Condition`` wait (never a polling loop), ends early with
:class:`~tinkex.errors.ClientClosedError` when the caller's stop event is set, and with
:class:`~tinkex.errors.APITimeoutError` once the caller's deadline (a ``clock.monotonic()``
instant) has passed.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any, ContextManager, Deque, Iterator, Optional

from ._clock import SYSTEM_CLOCK, Clock
from .errors import APITimeoutError, ClientClosedError
from .types import EncodedTextChunk, ImageAssetPointerChunk, ImageChunk, ModelInput

__all__ = ["BackoffGate", "BytesBudget", "DispatchGate", "SessionLimits", "Slots", "estimate_bytes"]

BYTES_PER_TOKEN = 10
THROTTLE_PENALTY = 20
# Closers wake queued waiters themselves (``wake_waiters``); this is only the last resort for a
# stop event set without that call (Event has no callbacks). It is long on purpose: with
# thousands of callers queued, a short period made every one of them wake and re-take the
# counter's shared lock several times a second, a lock convoy that starved the releases the
# queue was waiting for (seen at 2,000 in flight: under 20 of 2,000 threads doing HTTP).
STOP_CHECK_INTERVAL = 5.0


def estimate_bytes(model_input: object) -> int:
    """Estimate the wire size of a prompt the way the official SDK does.

    10 bytes per token, the base64 length of inline image data, the length of an image
    pointer's location; unknown chunks (and anything that is not a ModelInput) count 0.

    Example:
        >>> estimate_bytes(ModelInput.from_ints([1, 2, 3]))
        30
    """
    if not isinstance(model_input, ModelInput):
        return 0
    return sum(_chunk_bytes(chunk) for chunk in model_input.chunks)


def _chunk_bytes(chunk: object) -> int:
    if isinstance(chunk, EncodedTextChunk):
        return BYTES_PER_TOKEN * len(chunk.tokens)
    if isinstance(chunk, ImageChunk):
        return 4 * ((len(chunk.data) + 2) // 3)  # the base64 length, without encoding
    if isinstance(chunk, ImageAssetPointerChunk):
        return len(chunk.location)
    return 0  # pragma: no cover - defensive: ModelInput's converter admits only the three chunk types


def _wait_slice(stop: Optional[threading.Event], deadline: Optional[float], clock: Clock) -> Optional[float]:
    """How long one wait may last; raises when the caller has stopped or run out of time."""
    if stop is not None and stop.is_set():
        raise ClientClosedError("The client was closed while waiting for admission")
    left = None
    if deadline is not None:
        left = deadline - clock.monotonic()
        if left <= 0:
            raise APITimeoutError("The call's deadline passed while waiting for admission")
    if stop is None:
        return left
    return STOP_CHECK_INTERVAL if left is None else min(left, STOP_CHECK_INTERVAL)


class _FifoCounter:
    """A counter whose waiters are admitted strictly first come, first served.

    Each waiter has its own Condition on the shared lock, so a release wakes only the head
    of the queue (no thundering herd); an admitted or departing head wakes the next one.
    """

    def __init__(self, capacity: int) -> None:
        self._lock = threading.Lock()
        self.capacity = capacity
        self._remaining = capacity
        self._waiters: Deque[threading.Condition] = deque()

    def _admissible(self, n: int) -> bool:
        raise NotImplementedError  # pragma: no cover - abstract: Slots and BytesBudget override it

    @property
    def remaining(self) -> int:
        return self._remaining

    @property
    def waiting(self) -> int:
        """How many callers are queued right now."""
        return len(self._waiters)

    def acquire(
        self,
        n: int,
        *,
        stop: Optional[threading.Event] = None,
        deadline: Optional[float] = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Take ``n``, waiting in FIFO order while not admissible.

        Raises:
            ClientClosedError: ``stop`` was set before admission.
            APITimeoutError: ``deadline`` passed before admission.
        """
        with self._lock:
            if not self._waiters and self._admissible(n):
                self._remaining -= n
                return
            me = threading.Condition(self._lock)
            self._waiters.append(me)
            try:
                while not (self._waiters[0] is me and self._admissible(n)):
                    me.wait(_wait_slice(stop, deadline, clock))
                self._remaining -= n
            finally:
                self._leave(me)

    def _leave(self, me: threading.Condition) -> None:
        if self._waiters[0] is me:
            self._waiters.popleft()
            self._wake_head()
        else:
            self._waiters.remove(me)

    def release(self, n: int) -> None:
        """Give back ``n`` and wake the first waiter."""
        with self._lock:
            self._remaining += n
            self._wake_head()

    def resize(self, capacity: int) -> None:
        """Change the capacity, keeping what is held (the remainder moves by the difference)."""
        with self._lock:
            self._remaining += capacity - self.capacity
            self.capacity = capacity
            self._wake_head()

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].notify()

    def wake_waiters(self) -> None:
        """Wake every waiter so it re-checks its stop event now (call after setting one)."""
        with self._lock:
            for waiter in self._waiters:
                waiter.notify()

    @contextlib.contextmanager
    def hold(self, n: int, **kwargs: Any) -> Iterator[None]:
        """Acquire ``n`` (same keywords as :meth:`acquire`) for a ``with`` block; always released."""
        self.acquire(n, **kwargs)
        try:
            yield
        finally:
            self.release(n)


class BytesBudget(_FifoCounter):
    """A byte budget that may go negative, so one oversize request is never blocked forever.

    A request is admitted at once while the remaining budget is >= 0 (it may drive it
    negative); otherwise it queues, FIFO, until the budget is back to >= 0.
    Thread-safe: one lock guards the budget and its queue of waiters.

    Example:
        >>> budget = BytesBudget(1000)
        >>> budget.acquire(500); budget.acquire(600); budget.remaining
        -100
        >>> budget.acquire(100, deadline=0.0)  # queues until the budget is >= 0 again
        Traceback (most recent call last):
        ...
        tinkex.errors.APITimeoutError: The call's deadline passed while waiting for admission
    """

    def _admissible(self, n: int) -> bool:
        return self._remaining >= 0


class Slots(_FifoCounter):
    """A counting semaphore with FIFO waiters, a stop event and a deadline.

    Thread-safe: one lock guards the count and its queue of waiters.

    Example:
        >>> slots = Slots(2)
        >>> with slots.hold(1):
        ...     slots.remaining
        1
    """

    def _admissible(self, n: int) -> bool:
        return self._remaining >= n


class BackoffGate:
    """The holder-wide 429 backoff deadline.

    ``back_off`` only ever extends the deadline (``max``), nothing clears it early, and
    :meth:`wait` re-reads it after every sleep, so an extension made meanwhile is honoured
    (client_behaviour M13). After the deadline, :meth:`throttled` stays true for
    ``throttle_window`` seconds. Thread-safe: one lock serialises writers; readers take a
    single attribute read, which is atomic, so the hot path takes no lock.

    Example:
        >>> gate = BackoffGate()
        >>> gate.back_off(1.0)
        >>> gate.active(), gate.throttled()
        (True, True)
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK, throttle_window: float = 10.0) -> None:
        self._clock = clock
        self._throttle_window = throttle_window
        self._lock = threading.Lock()
        self._until = 0.0

    @property
    def until(self) -> float:
        """The deadline as a ``clock.monotonic()`` instant; 0 when no backoff was ever set."""
        return self._until

    def back_off(self, seconds: float) -> None:
        """Extend the deadline to at least ``seconds`` from now."""
        with self._lock:
            self._until = max(self._until, self._clock.monotonic() + seconds)

    def active(self) -> bool:
        until = self._until
        return until != 0.0 and self._clock.monotonic() < until

    def throttled(self) -> bool:
        """Whether a backoff is active or ended less than ``throttle_window`` seconds ago."""
        until = self._until
        return until != 0.0 and self._clock.monotonic() < until + self._throttle_window

    def wait(self, *, stop: Optional[threading.Event] = None, deadline: Optional[float] = None) -> None:
        """Block until the backoff deadline has passed (a no-op when none is active).

        Raises:
            ClientClosedError: ``stop`` was set while waiting.
            APITimeoutError: ``deadline`` came before the end of the backoff.
        """
        while True:
            now = self._clock.monotonic()
            until = self._until
            if now >= until:
                return
            if deadline is not None and now >= deadline:
                raise APITimeoutError("The call's deadline passed during a 429 backoff")
            wake = until if deadline is None else min(until, deadline)
            if self._clock.sleep(wake - now, stop):
                raise ClientClosedError("The client was closed during a 429 backoff")


class DispatchGate:
    """Admission to the submit path: count slots, throttled slots and the byte budget.

    While :meth:`BackoffGate.throttled` holds (decided once per admission), a request also
    takes one of ``throttled_concurrency`` slots and is charged ``THROTTLE_PENALTY`` times its
    estimated bytes. Waiting out the backoff itself is the caller's job
    (:meth:`BackoffGate.wait`), done while admitted, as the official SDK does.
    Thread-safe: each of its limits has its own lock; the gate itself holds no state.

    Example:
        >>> gate = DispatchGate(backoff=BackoffGate())
        >>> with gate.admit(30):
        ...     gate.bytes.remaining
        10485730
    """

    def __init__(
        self,
        *,
        concurrency: int = 400,
        throttled_concurrency: int = 10,
        byte_budget: int = 10 * 1024 * 1024,
        backoff: BackoffGate,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.slots = Slots(concurrency)
        self.throttled_slots = Slots(throttled_concurrency)
        self.bytes = BytesBudget(byte_budget)
        self.backoff = backoff
        self._clock = clock

    def admit(
        self,
        estimated_bytes: int,
        *,
        stop: Optional[threading.Event] = None,
        deadline: Optional[float] = None,
    ) -> ContextManager[None]:
        """Hold every limit for a ``with`` block; acquired in order, released in reverse.

        Raises (on entering the block):
            ClientClosedError: ``stop`` was set while waiting.
            APITimeoutError: ``deadline`` passed while waiting.
        """
        return _Admission(self, estimated_bytes, stop, deadline)

    def wake_waiters(self) -> None:
        """Wake every waiter so it re-checks its stop event now (call after setting one)."""
        for limit in (self.slots, self.throttled_slots, self.bytes):
            limit.wake_waiters()


class _Admission:
    """One request's hold on a DispatchGate (a plain class: the hot path avoids generator overhead)."""

    __slots__ = ("_gate", "_bytes", "_stop", "_deadline", "_throttled", "_charge")

    def __init__(self, gate: DispatchGate, estimated_bytes: int, stop: Optional[threading.Event],
                 deadline: Optional[float]) -> None:
        self._gate = gate
        self._bytes = estimated_bytes
        self._stop = stop
        self._deadline = deadline
        self._throttled = False
        self._charge = 0

    def __enter__(self) -> None:
        gate = self._gate
        self._throttled = gate.backoff.throttled()
        self._charge = self._bytes * THROTTLE_PENALTY if self._throttled else self._bytes
        self._take(gate.slots, 1)
        try:
            if self._throttled:
                self._take(gate.throttled_slots, 1)
            try:
                self._take(gate.bytes, self._charge)
            except BaseException:
                if self._throttled:
                    gate.throttled_slots.release(1)
                raise
        except BaseException:
            gate.slots.release(1)
            raise

    def _take(self, limit: _FifoCounter, n: int) -> None:
        limit.acquire(n, stop=self._stop, deadline=self._deadline, clock=self._gate._clock)

    def __exit__(self, *exc_info: Any) -> None:
        gate = self._gate
        gate.bytes.release(self._charge)
        if self._throttled:
            gate.throttled_slots.release(1)
        gate.slots.release(1)


class SessionLimits:
    """The limits every sampling client of one session shares (protocol.md 7.4, 7.5).

    They exist from the session's construction with the protocol's defaults, and
    :meth:`configure` resizes them to what the handshake announced, so callers never find one
    missing.
    Thread-safe: each limit has its own lock; this object only holds them.

    Example:
        >>> limits = SessionLimits()
        >>> limits.configure(dispatch_bytes=100, response_bytes=200)
        >>> limits.dispatch.bytes.remaining, limits.response_budget.remaining
        (100, 200)
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.backoff = BackoffGate(clock=clock)
        self.dispatch = DispatchGate(backoff=self.backoff, clock=clock)
        self.response_budget = BytesBudget(50 * 1024 * 1024)

    def configure(self, *, dispatch_bytes: int, response_bytes: int) -> None:
        self.dispatch.bytes.resize(dispatch_bytes)
        self.response_budget.resize(response_bytes)

    def wake_waiters(self) -> None:
        """Make every call queued on these limits re-check its stop event now."""
        self.dispatch.wake_waiters()
        self.response_budget.wake_waiters()
