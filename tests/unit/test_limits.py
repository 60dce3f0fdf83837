"""Byte budget, count slots, the 429 backoff gate and the dispatch gate (client_behaviour 12: 19-23)."""

from __future__ import annotations

import base64
import threading
from typing import Callable, List, Optional

import pytest

from tinkex import _limits as limits_module
from tinkex._limits import BackoffGate, BytesBudget, DispatchGate, Slots, estimate_bytes
from tinkex.errors import APITimeoutError, ClientClosedError
from tinkex.types import EncodedTextChunk, ImageAssetPointerChunk, ImageChunk, ModelInput

BLOCKED_CHECK = 0.05  # how long a waiter must stay blocked to count as blocked
UNBLOCK_WAIT = 5.0  # generous bound for a released waiter to proceed


class FakeClock:
    """A clock whose time moves only when told to, or by sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: List[float] = []
        self.on_sleep: Optional[Callable[[], None]] = None
        self.monotonic_calls = 0

    def monotonic(self) -> float:
        self.monotonic_calls += 1
        return self.now

    def wall(self) -> float:
        return 1.7e9 + self.now

    def random(self) -> float:
        return 0.5

    def sleep(self, seconds: float, stop: Optional[threading.Event] = None) -> bool:
        if stop is not None and stop.is_set():
            return True
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()
        return False


class Waiter:
    """Runs a blocking call in a thread and records how it ended."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def finished(self, timeout: float = UNBLOCK_WAIT) -> bool:
        finished = self.done.wait(timeout)
        if finished:
            self.thread.join(UNBLOCK_WAIT)
        return finished


def wait_until_queued(limit: object, count: int) -> None:
    event = threading.Event()
    for _ in range(500):
        if limit.waiting >= count:  # type: ignore[attr-defined]
            return
        event.wait(0.01)
    raise AssertionError(f"never saw {count} waiters")


# --- estimate_bytes -------------------------------------------------------------------------


def test_text_costs_ten_bytes_per_token() -> None:
    assert estimate_bytes(ModelInput.from_ints(range(7))) == 70


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 100])
def test_image_costs_its_base64_length(size: int) -> None:
    data = bytes(range(size))
    chunk = ImageChunk(data=data, format="png", expected_tokens=1)
    assert estimate_bytes(ModelInput(chunks=[chunk])) == len(base64.b64encode(data))


def test_pointer_costs_its_location_length_and_chunks_add_up() -> None:
    prompt = ModelInput(chunks=[
        EncodedTextChunk(tokens=[1, 2]),
        ImageAssetPointerChunk(format="jpeg", location="s3://bucket/key.jpg"),
        ImageChunk(data=b"abc", format="png", expected_tokens=4),
    ])
    assert estimate_bytes(prompt) == 20 + len("s3://bucket/key.jpg") + 4


def test_anything_else_costs_nothing() -> None:
    assert estimate_bytes([1, 2, 3]) == 0
    assert estimate_bytes(ModelInput.empty()) == 0


def test_128_kib_is_13108_tokens() -> None:
    assert estimate_bytes(ModelInput.from_ints([1] * 13107)) <= 128 * 1024
    assert estimate_bytes(ModelInput.from_ints([1] * 13108)) > 128 * 1024


# --- BytesBudget ----------------------------------------------------------------------------


def test_budget_admits_into_the_negative_then_blocks_until_released() -> None:
    budget = BytesBudget(1000)
    budget.acquire(500)
    budget.acquire(600)
    assert budget.remaining == -100
    third = Waiter(lambda: budget.acquire(100))
    assert not third.finished(BLOCKED_CHECK)
    budget.release(500)
    assert third.finished() and third.error is None
    assert budget.remaining == 300


def test_oversize_request_is_admitted_when_budget_is_not_negative() -> None:
    budget = BytesBudget(100)
    budget.acquire(10_000)
    assert budget.remaining == -9_900


def test_budget_waiters_are_served_first_come_first_served() -> None:
    budget = BytesBudget(0)
    budget.acquire(10)
    order: List[str] = []
    first = Waiter(lambda: (budget.acquire(1), order.append("first")))
    wait_until_queued(budget, 1)
    second = Waiter(lambda: (budget.acquire(1), order.append("second")))
    wait_until_queued(budget, 2)
    budget.release(10)  # back to 0: only the head gets in, and drives it negative
    assert first.finished()
    assert not second.finished(BLOCKED_CHECK)
    budget.release(1)
    assert second.finished()
    assert order == ["first", "second"]


def test_release_admits_a_chain_of_waiters_while_budget_stays_non_negative() -> None:
    budget = BytesBudget(100)
    budget.acquire(200)  # -100
    waiters = []
    for count in range(1, 4):
        waiters.append(Waiter(lambda: budget.acquire(0)))
        wait_until_queued(budget, count)
    budget.release(200)
    assert all(w.finished() for w in waiters)
    assert budget.remaining == 100 and budget.waiting == 0


def test_hold_releases_on_return_and_on_exception() -> None:
    budget = BytesBudget(1000)
    with budget.hold(400):
        assert budget.remaining == 600
    assert budget.remaining == 1000
    with pytest.raises(KeyError), budget.hold(400):
        raise KeyError("boom")
    assert budget.remaining == 1000


def test_stop_event_interrupts_a_waiter_and_the_next_one_moves_up() -> None:
    budget = BytesBudget(0)
    budget.acquire(1)
    stop = threading.Event()
    stopped = Waiter(lambda: budget.acquire(1, stop=stop))
    wait_until_queued(budget, 1)
    behind = Waiter(lambda: budget.acquire(1))
    wait_until_queued(budget, 2)
    stop.set()
    budget.wake_waiters()
    assert stopped.finished() and isinstance(stopped.error, ClientClosedError)
    budget.release(1)
    assert behind.finished() and behind.error is None
    assert budget.remaining == -1 and budget.waiting == 0


def test_stop_event_is_noticed_without_a_wake_up_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # The last-resort period is seconds long in production; shortened so the test stays quick.
    monkeypatch.setattr(limits_module, "STOP_CHECK_INTERVAL", 0.05)
    budget = BytesBudget(0)
    budget.acquire(1)
    stop = threading.Event()
    waiter = Waiter(lambda: budget.acquire(1, stop=stop))
    wait_until_queued(budget, 1)
    stop.set()
    assert waiter.finished() and isinstance(waiter.error, ClientClosedError)


def test_deadline_raises_api_timeout_error() -> None:
    clock = FakeClock()
    budget = BytesBudget(0)
    budget.acquire(1)
    waiter = Waiter(lambda: budget.acquire(1, deadline=clock.now + 5, clock=clock))
    wait_until_queued(budget, 1)
    assert not waiter.finished(BLOCKED_CHECK)
    clock.now += 5
    budget.wake_waiters()
    assert waiter.finished() and isinstance(waiter.error, APITimeoutError)
    assert budget.waiting == 0 and budget.remaining == -1


def test_a_stopped_caller_never_waits() -> None:
    budget = BytesBudget(0)
    budget.acquire(1)
    stop = threading.Event()
    stop.set()
    with pytest.raises(ClientClosedError):
        budget.acquire(1, stop=stop)


# --- Slots ----------------------------------------------------------------------------------


def test_slots_newcomer_does_not_overtake_a_queued_waiter() -> None:
    slots = Slots(2)
    slots.acquire(2)
    big = Waiter(lambda: slots.acquire(2))
    wait_until_queued(slots, 1)
    slots.release(1)  # one free, but the head wants two
    clock = FakeClock()
    with pytest.raises(APITimeoutError):
        slots.acquire(1, deadline=clock.now, clock=clock)
    slots.release(1)
    assert big.finished() and big.error is None
    assert slots.remaining == 0


def test_slot_waiter_blocks_without_spinning() -> None:
    clock = FakeClock()
    slots = Slots(1)
    slots.acquire(1)
    waiter = Waiter(lambda: slots.acquire(1, deadline=clock.now + 3600, clock=clock))
    wait_until_queued(slots, 1)
    calls_while_queued = clock.monotonic_calls
    assert not waiter.finished(0.2)
    assert clock.monotonic_calls - calls_while_queued <= 1  # a spinning waiter re-reads the clock
    slots.release(1)
    assert waiter.finished() and waiter.error is None


# --- BackoffGate ----------------------------------------------------------------------------


def test_backoff_extends_with_max_and_never_shortens() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock)
    assert gate.until == 0.0
    gate.back_off(5)
    gate.back_off(1)
    assert gate.until == clock.now + 5
    gate.back_off(10)
    assert gate.until == clock.now + 10


def test_active_and_throttled_windows() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock, throttle_window=10)
    assert not gate.active() and not gate.throttled()
    gate.back_off(1)
    start = clock.now
    for offset, active, throttled in [(0.0, True, True), (0.999, True, True), (1.0, False, True),
                                      (10.999, False, True), (11.0, False, False)]:
        clock.now = start + offset
        assert (gate.active(), gate.throttled()) == (active, throttled), offset


def test_wait_sleeps_until_the_deadline() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock)
    gate.back_off(0.12)
    assert gate.active()
    gate.wait()
    assert sum(clock.sleeps) == pytest.approx(0.12)
    assert not gate.active()


def test_wait_without_backoff_returns_at_once() -> None:
    clock = FakeClock()
    BackoffGate(clock).wait()
    assert clock.sleeps == []


def test_wait_honours_an_extension_made_while_waiting() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock)
    gate.back_off(1.0)
    clock.on_sleep = lambda: (gate.back_off(4.0), setattr(clock, "on_sleep", None))
    start = clock.now
    gate.wait()
    assert clock.now == pytest.approx(start + 5.0)
    assert clock.sleeps == pytest.approx([1.0, 4.0])


def test_wait_past_the_callers_deadline_raises_api_timeout_error() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock)
    gate.back_off(5)
    with pytest.raises(APITimeoutError):
        gate.wait(deadline=clock.now + 2)
    assert clock.sleeps == pytest.approx([2.0])


def test_stop_event_interrupts_a_backoff_wait() -> None:
    gate = BackoffGate()
    gate.back_off(3600)
    stop = threading.Event()
    waiter = Waiter(lambda: gate.wait(stop=stop))
    assert not waiter.finished(BLOCKED_CHECK)
    stop.set()
    assert waiter.finished() and isinstance(waiter.error, ClientClosedError)


def test_concurrent_back_offs_keep_the_latest_deadline() -> None:
    clock = FakeClock()
    gate = BackoffGate(clock)
    threads = [threading.Thread(target=gate.back_off, args=(float(n),)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert gate.until == clock.now + 49


# --- DispatchGate ---------------------------------------------------------------------------


def make_gate(clock: FakeClock, **kwargs: int) -> DispatchGate:
    return DispatchGate(backoff=BackoffGate(clock), clock=clock, **kwargs)


def test_admit_passes_the_value_through_and_restores_every_limit() -> None:
    gate = make_gate(FakeClock(), byte_budget=1000)
    with gate.admit(100):
        assert gate.bytes.remaining == 900 and gate.slots.remaining == 399
        value = "result"
    assert value == "result"
    assert (gate.bytes.remaining, gate.slots.remaining, gate.throttled_slots.remaining) == (1000, 400, 10)


def test_throttled_admission_charges_twenty_times_and_blocks_the_next() -> None:
    clock = FakeClock()
    gate = make_gate(clock, byte_budget=1000)
    gate.backoff.back_off(10)
    release_first = threading.Event()
    in_first = threading.Event()

    def first() -> None:
        with gate.admit(100):
            in_first.set()
            release_first.wait(UNBLOCK_WAIT)

    holder = Waiter(first)
    assert in_first.wait(UNBLOCK_WAIT)
    assert gate.bytes.remaining == 1000 - 2000
    held = []
    second = Waiter(lambda: held.append(gate.admit(100)) or held[-1].__enter__())
    assert not second.finished(BLOCKED_CHECK)
    release_first.set()
    assert holder.finished() and second.finished() and second.error is None
    assert gate.bytes.remaining == 1000 - 2000
    held[-1].__exit__(None, None, None)
    assert gate.bytes.remaining == 1000


def test_throttled_slots_limit_admissions_only_while_throttled() -> None:
    clock = FakeClock()
    gate = make_gate(clock, throttled_concurrency=1)
    gate.backoff.back_off(1)
    with gate.admit(0):
        with pytest.raises(APITimeoutError), gate.admit(0, deadline=clock.now):
            pass
        clock.now += 11  # backoff over and the 10 s throttle window too
        with gate.admit(0):
            assert gate.throttled_slots.remaining == 0  # still held by the outer admission
    assert gate.throttled_slots.remaining == 1


def test_dispatch_waiter_blocks_without_spinning_and_proceeds_when_a_slot_frees() -> None:
    clock = FakeClock()
    gate = make_gate(clock, concurrency=1)
    first = gate.admit(10)
    first.__enter__()
    admitted = threading.Event()

    def second() -> None:
        with gate.admit(10, deadline=clock.now + 3600):
            admitted.set()

    waiter = Waiter(second)
    wait_until_queued(gate.slots, 1)
    calls_while_queued = clock.monotonic_calls
    assert not admitted.wait(0.2)
    assert clock.monotonic_calls - calls_while_queued <= 1
    first.__exit__(None, None, None)
    assert waiter.finished() and admitted.is_set()


def test_admit_releases_everything_on_exception() -> None:
    clock = FakeClock()
    gate = make_gate(clock, byte_budget=1000)
    gate.backoff.back_off(1)
    with pytest.raises(ValueError), gate.admit(10):
        raise ValueError("boom")
    assert (gate.bytes.remaining, gate.slots.remaining, gate.throttled_slots.remaining) == (1000, 400, 10)


def test_a_failed_byte_wait_gives_back_the_slots() -> None:
    clock = FakeClock()
    gate = make_gate(clock, byte_budget=0)
    gate.bytes.acquire(1)
    with pytest.raises(APITimeoutError), gate.admit(1, deadline=clock.now):
        pass
    assert gate.slots.remaining == 400 and gate.bytes.waiting == 0


def test_wake_waiters_lets_stopped_dispatch_waiters_leave_at_once() -> None:
    gate = make_gate(FakeClock(), concurrency=1)
    gate.slots.acquire(1)
    stop = threading.Event()
    waiter = Waiter(lambda: gate.admit(0, stop=stop).__enter__())
    wait_until_queued(gate.slots, 1)
    stop.set()
    gate.wake_waiters()
    assert waiter.finished(1.0) and isinstance(waiter.error, ClientClosedError)
