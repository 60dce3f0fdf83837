"""The retrieve_futures poller (protocol.md 4.10) over the in-memory transport."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from tests.support.virtual_clock import VirtualClock
from tinkex._http import FakeTransport
from tinkex._policy import PollPolicy
from tinkex._sampling.poller import Completion, CompletionPoller
from tinkex.errors import APITimeoutError, TinkexError

PATH = "retrieve_futures"


class Outcomes:
    """Collects what the poller hands back. Thread-safe: one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: List[Any] = []
        self.event = threading.Event()

    def add(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)
        self.event.set()

    def wait(self, count: int, timeout: float = 5.0) -> List[Any]:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                if len(self.items) >= count:
                    return list(self.items)
            assert time.monotonic() < deadline, f"got {self.items}"
            time.sleep(0.005)


def poller(*answers: Any, clone: int = 0) -> tuple:
    time_ = VirtualClock()
    transport = FakeTransport(clock=time_.clock())
    transport.on(PATH, *answers)
    return CompletionPoller(transport, "s:sample:0", clone, clock=time_.clock(), policy=PollPolicy(),
                            billing_window=3600.0), transport, time_


def test_completions_reach_their_waiters_and_are_acknowledged_in_the_next_poll() -> None:
    the_poller, transport, _ = poller(
        {"completions": [{"state": "finished", "request_id": "r1", "response_payload_uncompressed_size": 96},
                         {"state": "failed", "request_id": "r2"}], "cursor": 2},
        {"completions": [], "cursor": 2})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    the_poller.wait("r2", None, done.add, done.add)
    got = done.wait(2)
    assert Completion("r1", failed=False, size=96) in got and Completion("r2", failed=True) in got
    the_poller.acknowledge("r1")
    the_poller.acknowledge("r2")
    deadline = time.monotonic() + 5
    while not any(c.body["retrieved_request_ids"] for c in transport.calls_to(PATH)):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    the_poller.close()
    polls = transport.calls_to(PATH)
    assert polls[0].body["target"] == {"type": "sampling_session", "sampling_session_id": "s:sample:0",
                                       "cloned_sampler_id": 0}
    assert polls[0].body["prev_cursor"] == 0
    acked = next(c for c in polls if c.body["retrieved_request_ids"])
    assert acked.body["prev_cursor"] == 2 and sorted(acked.body["retrieved_request_ids"]) == ["r1", "r2"]
    assert acked.body.get("timeout") == 0.0  # nothing waits any more: an ack-only poll


@pytest.mark.parametrize("status", [408, 409, 429, 500, 503])
def test_transient_answers_are_retried_after_one_second(status: int) -> None:
    the_poller, transport, time_ = poller((status, b"{}"), {"completions": [{"state": "finished",
                                                                              "request_id": "r1"}], "cursor": 1})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    assert done.wait(1) == [Completion("r1")]
    the_poller.close()
    assert 1.0 in time_.sleeps


@pytest.mark.parametrize("status", [401, 403, 404, 410, 422])
def test_a_fatal_answer_fails_every_waiter_and_every_later_one(status: int) -> None:
    the_poller, _, _ = poller((status, {"detail": "no"}))
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    (error,) = done.wait(1)
    assert isinstance(error, TinkexError) and "retrieve_futures polling failed for sampling session" in str(error)
    later = Outcomes()
    the_poller.wait("r2", None, later.add, later.add)
    assert later.wait(1) == [error]
    the_poller.close()


def test_a_400_with_a_body_gets_three_retries_then_fails() -> None:
    the_poller, transport, _ = poller((400, {"detail": "bad"}))
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    assert isinstance(done.wait(1)[0], TinkexError)
    assert len(transport.calls_to(PATH)) == 4
    the_poller.close()


def test_a_deadline_fails_its_waiter_with_a_timeout_and_bounds_the_long_poll() -> None:
    the_poller, transport, time_ = poller({"completions": [], "cursor": 0})
    done = Outcomes()

    def advance(_call: Any) -> dict:
        time_.advance(1.0)
        return {"completions": [], "cursor": 0}

    transport.on(PATH, advance)
    transport._scripts[PATH].popleft()
    the_poller.wait("r1", time_.now + 2.5, done.add, done.add)
    (error,) = done.wait(1)
    assert isinstance(error, APITimeoutError) and error.request_id == "r1"
    first = transport.calls_to(PATH)[0]
    assert 0 < first.body["timeout"] <= 2.5  # the poll never outlives the earliest deadline
    the_poller.close()


def test_a_cancelled_waiter_is_forgotten_and_its_completion_acknowledged() -> None:
    the_poller, transport, _ = poller({"completions": [], "cursor": 0})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    assert the_poller.forget("r1") and not the_poller.forget("r1")
    deadline = time.monotonic() + 5
    while not any("r1" in c.body["retrieved_request_ids"] for c in transport.calls_to(PATH)):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    the_poller.close()
    assert done.items == []


def test_close_stops_the_thread_promptly() -> None:
    the_poller, _, _ = poller({"completions": [], "cursor": 0})
    the_poller.wait("r1", None, lambda c: None, lambda e: None)
    started = time.monotonic()
    the_poller.close()
    assert time.monotonic() - started < 1.0
    assert not the_poller._thread.is_alive()


def test_a_completion_that_arrives_before_its_waiter_is_kept_for_it() -> None:
    """The promise's answer and the poll race: the poll may report r1 before the sample registers."""
    the_poller, transport, _ = poller({"completions": [{"state": "finished", "request_id": "r0"}], "cursor": 1},
                                      {"completions": [{"state": "finished", "request_id": "r1"}], "cursor": 2},
                                      {"completions": [], "cursor": 2})
    first = Outcomes()
    the_poller.wait("r0", None, first.add, first.add)
    first.wait(1)
    the_poller.acknowledge("r0")  # fetched: the poller polls again to say so, and hears of r1
    deadline = time.monotonic() + 5
    while "r1" not in the_poller._unclaimed:  # r1 was reported while nobody waited for it
        assert time.monotonic() < deadline
        time.sleep(0.005)
    late = Outcomes()
    the_poller.wait("r1", None, late.add, late.add)
    assert late.wait(1) == [Completion("r1")]
    the_poller.close()
    assert all("r1" not in c.body["retrieved_request_ids"] for c in transport.calls_to(PATH))
