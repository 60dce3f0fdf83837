"""The retrieve_futures poller (protocol.md 4.10) over the in-memory transport."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from tests.support.virtual_clock import VirtualClock
from tinkex._http import FakeTransport
from tinkex._policy import PollPolicy
from tinkex._sampling.poller import UNCLAIMED_TTL, Completion, CompletionPoller
from tinkex.errors import APIConnectionError, APITimeoutError, BillingError, DecodeError, TinkexError

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


def test_waiting_counts_the_registered_waiters() -> None:
    the_poller, _, _ = poller({"completions": [], "cursor": 0})
    assert the_poller.waiting == 0
    the_poller.wait("r1", None, lambda c: None, lambda e: None)
    the_poller.wait("r2", None, lambda c: None, lambda e: None)
    assert the_poller.waiting == 2
    the_poller.forget("r1")
    assert the_poller.waiting == 1
    the_poller.close()


def test_an_earlier_deadline_cuts_the_poll_in_progress_and_repolls_at_once_with_its_bound() -> None:
    """A waiter whose deadline falls inside the running long poll must not wait for that poll to end."""
    in_poll, release = threading.Event(), threading.Event()
    the_poller, transport, time_ = poller()

    def held_then_cut(_call: Any) -> Any:
        in_poll.set()
        assert release.wait(5)
        return APIConnectionError("the read was cut", url="http://fake.invalid")  # what an aborted read raises

    transport.on(PATH, held_then_cut, {"completions": [{"state": "finished", "request_id": "r2"}], "cursor": 1})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)  # no deadline: the poll runs for the policy's read timeout
    assert in_poll.wait(5)
    the_poller.wait("r2", time_.now + 3.0, done.add, done.add)  # earlier than the poll's end: the poll is cut
    assert the_poller._poll_abort is not None and the_poller._poll_abort.aborted
    release.set()
    assert done.wait(1) == [Completion("r2")]
    the_poller.close()
    first, second = transport.calls_to(PATH)[:2]
    assert "timeout" not in first.body
    assert second.body["timeout"] == pytest.approx(3.0)  # re-sent bounded by r2's deadline
    assert 1.0 not in time_.sleeps  # a cut poll is re-sent at once, not after the 1 s failure pause


def test_a_later_deadline_leaves_the_poll_in_progress_alone() -> None:
    in_poll, release = threading.Event(), threading.Event()
    the_poller, transport, time_ = poller()

    def held(_call: Any) -> Any:
        in_poll.set()
        assert release.wait(5)
        return {"completions": [{"state": "finished", "request_id": "r1"}], "cursor": 1}

    transport.on(PATH, held, {"completions": [], "cursor": 1})
    done = Outcomes()
    the_poller.wait("r1", time_.now + 5.0, done.add, done.add)
    assert in_poll.wait(5)
    the_poller.wait("r2", time_.now + 50.0, done.add, done.add)
    assert the_poller._poll_abort is not None and not the_poller._poll_abort.aborted
    release.set()
    assert done.wait(1) == [Completion("r1")]
    the_poller.close()


def test_close_from_a_callback_on_the_poller_thread_returns() -> None:
    """A callback runs on the poller's thread: closing from there must not try to join itself."""
    the_poller, _, _ = poller({"completions": [{"state": "finished", "request_id": "r1"}], "cursor": 1})
    done = Outcomes()

    def close_then_record(completion: Completion) -> None:
        the_poller.close()
        done.add(completion)

    the_poller.wait("r1", None, close_then_record, done.add)
    assert done.wait(1) == [Completion("r1")]
    the_poller._thread.join(5)
    assert not the_poller._thread.is_alive()


def test_402_pauses_for_the_billing_delay_then_polls_on() -> None:
    the_poller, _, time_ = poller((402, {"detail": "pay"}),
                                  {"completions": [{"state": "finished", "request_id": "r1"}], "cursor": 1})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    assert done.wait(1) == [Completion("r1")]
    the_poller.close()
    assert time_.sleeps == [PollPolicy().billing_delay]


def test_402_past_the_billing_window_fails_every_waiter_with_the_billing_error() -> None:
    time_ = VirtualClock()
    transport = FakeTransport(clock=time_.clock())
    transport.on(PATH, (402, {"detail": "pay"}))
    the_poller = CompletionPoller(transport, "s:sample:0", 0, clock=time_.clock(), policy=PollPolicy(),
                                  billing_window=12.0)
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    (error,) = done.wait(1)
    the_poller.close()
    assert isinstance(error, TinkexError) and "retrieve_futures polling failed" in str(error)
    assert isinstance(error.__cause__, BillingError)
    assert time_.sleeps == [5.0, 5.0, 5.0]  # the 4th 402 comes 15 s into a 12 s window


def test_a_completion_nobody_claims_is_acknowledged_after_its_time_to_live() -> None:
    the_poller, transport, time_ = poller()

    def much_later(_call: Any) -> dict:
        time_.advance(UNCLAIMED_TTL + 1)
        return {"completions": [], "cursor": 1}

    transport.on(PATH, {"completions": [{"state": "finished", "request_id": "ghost"}], "cursor": 1},
                 much_later, {"completions": [{"state": "finished", "request_id": "r1"}], "cursor": 2})
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    assert done.wait(1) == [Completion("r1")]
    the_poller.close()
    polls = transport.calls_to(PATH)
    assert [p.body["retrieved_request_ids"] for p in polls[:3]] == [[], [], ["ghost"]]
    assert "ghost" not in the_poller._unclaimed


@pytest.mark.parametrize("answer, message", [
    ([], "without a completions list"),
    ({"completions": {}, "cursor": 1}, "without a completions list"),
    ({"completions": []}, "without an integer cursor"),
    ({"completions": [], "cursor": True}, "without an integer cursor"),
    ({"completions": [], "cursor": "3"}, "without an integer cursor"),
    ({"completions": [{"state": "finished"}], "cursor": 1}, "a completion without a request_id"),
    ({"completions": ["r1"], "cursor": 1}, "a completion without a request_id"),
])
def test_a_malformed_answer_fails_every_waiter_with_a_decode_error(answer: Any, message: str) -> None:
    the_poller, _, _ = poller(answer)
    done = Outcomes()
    the_poller.wait("r1", None, done.add, done.add)
    (error,) = done.wait(1)
    the_poller.close()
    assert isinstance(error, DecodeError) and message in str(error)
