"""The retrieve_future loop (protocol.md 4.9) over the in-memory transport: one test per answer row."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, List, Optional, Tuple

import pytest

from tests.support.loops import result_bytes
from tests.support.virtual_clock import VirtualClock
from tinkex._http import FakeTransport
from tinkex._policy import PollPolicy
from tinkex._sampling.future import Cancelled, Final
from tinkex._sampling.poll import PollContext, poll_result
from tinkex.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientClosedError,
    ConflictError,
    DecodeError,
    NotFoundError,
    PermissionDeniedError,
    PromiseExpiredError,
    RequestFailedError,
    UnprocessableEntityError,
)
from tinkex.types import QueueState

PATH = "retrieve_future"


class Loop:
    """One poll loop's context over a FakeTransport, recording what the loop reports."""

    def __init__(self, *answers: Any, deadline_in: Optional[float] = None, billing_window: float = 3600.0,
                 policy: Optional[PollPolicy] = None) -> None:
        self.time = VirtualClock()
        self.transport = FakeTransport(clock=self.time.clock())
        self.transport.on(PATH, *answers)
        self.queue_states: List[Tuple[QueueState, Optional[str]]] = []
        self.events: List[str] = []
        self.reserved: List[int] = []
        self.cancel = threading.Event()
        self.ctx = PollContext(
            transport=self.transport, clock=self.time.clock(), policy=policy or PollPolicy(),
            stop=self.transport.stop_event, cancel=self.cancel,
            deadline=None if deadline_in is None else self.time.now + deadline_in,
            on_queue_state=lambda state, reason: self.queue_states.append((state, reason)),
            on_event=self.events.append, reserve_bytes=self._reserve, billing_window=billing_window,
        )

    @contextlib.contextmanager
    def _reserve(self, n: int) -> Iterator[None]:
        self.reserved.append(n)
        yield

    def run(self) -> Any:
        return poll_result(self.ctx, "req-1")

    @property
    def polls(self) -> List[Any]:
        return self.transport.calls_to(PATH)


def test_a_protobuf_result_ends_the_loop() -> None:
    loop = Loop(result_bytes((4, 5)))
    assert loop.run().sequences[0].tokens == [4, 5]
    (poll,) = loop.polls
    assert poll.body == {"request_id": "req-1", "allow_metadata_only": True}
    assert poll.headers["X-Tinker-Request-Iteration"] == "0"
    assert poll.headers["X-Tinker-Create-Promise-Roundtrip-Time"] == "0.0"
    assert poll.headers["X-Tinker-Request-Type"] == "Sample"


def test_a_json_result_ends_the_loop_too() -> None:
    loop = Loop({"sequences": [{"tokens": [1], "stop_reason": "stop"}]})
    assert loop.run().sequences[0].tokens == [1]


def test_try_again_repolls_and_reports_the_queue_state() -> None:
    loop = Loop({"type": "try_again", "request_id": "req-1", "queue_state": "paused_capacity",
                 "queue_state_reason": "full"}, result_bytes())
    loop.run()
    assert [p.headers["X-Tinker-Request-Iteration"] for p in loop.polls] == ["0", "1"]
    assert "X-Tinker-Create-Promise-Roundtrip-Time" not in loop.polls[1].headers
    assert loop.queue_states == [(QueueState.PAUSED_CAPACITY, "full")]
    assert loop.events == ["try_again"]
    assert loop.time.sleeps == [0.1]  # the floor between fast answers: never a busy loop


def test_complete_metadata_reserves_the_bytes_and_asks_for_the_result() -> None:
    loop = Loop({"status": "complete_metadata", "response_payload_size": 96}, result_bytes())
    loop.run()
    assert loop.reserved == [96]
    assert [p.body["allow_metadata_only"] for p in loop.polls] == [True, False]


def test_a_failed_request_is_final_with_its_category() -> None:
    loop = Loop({"error": "out of memory", "category": "server"})
    with pytest.raises(Final) as raised:
        loop.run()
    error = raised.value.error
    assert isinstance(error, RequestFailedError)
    assert error.category == "server" and error.request_id == "req-1"
    assert len(loop.polls) == 1


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_408_and_5xx_repoll_at_once(status: int) -> None:
    loop = Loop((status, {"queue_state": "paused_rate_limit"}), result_bytes())
    loop.run()
    assert len(loop.polls) == 2
    assert loop.time.sleeps == [0.1]  # only the floor, no backoff
    assert loop.queue_states == [(QueueState.PAUSED_RATE_LIMIT, None)]
    assert loop.events == [f"poll_{status}"]


@pytest.mark.parametrize("answer", [(429, b"{}"), (400, b""), APIConnectionError("reset", url="u")])
def test_429_bare_400_and_connection_errors_back_off_exponentially(answer: Any) -> None:
    loop = Loop(answer, answer, answer, answer, answer, answer, answer, result_bytes())
    loop.run()
    assert loop.time.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert len(loop.polls) == 8


def test_a_timeout_backs_off_like_a_connection_error() -> None:
    loop = Loop(APITimeoutError("slow", url="u"), result_bytes())
    loop.run()
    assert loop.time.sleeps == [1.0]


def test_a_success_resets_the_backoff() -> None:
    loop = Loop((429, b"{}"), (429, b"{}"), {"type": "try_again"}, (429, b"{}"), result_bytes())
    loop.run()
    assert loop.time.sleeps == [1.0, 2.0, 0.1, 1.0]


def test_400_with_a_body_gets_three_repolls_then_is_final() -> None:
    loop = Loop((400, {"detail": "bad"}))
    with pytest.raises(Final) as raised:
        loop.run()
    assert isinstance(raised.value.error, BadRequestError)
    assert len(loop.polls) == 4


def test_402_pauses_five_seconds_within_the_billing_window() -> None:
    loop = Loop((402, {"detail": "pay"}), (402, {"detail": "pay"}), result_bytes())
    loop.run()
    assert loop.time.sleeps.count(5.0) == 2


def test_402_past_the_billing_window_raises_billing_error() -> None:
    loop = Loop((402, {"detail": "pay"}), billing_window=9.0)
    with pytest.raises(BillingError):
        loop.run()
    assert len(loop.polls) == 3  # at 0, 5.1 and 10.2 s: the third is past 9 s


def test_410_raises_promise_expired_for_a_resubmit() -> None:
    loop = Loop((410, {"detail": "expired"}))
    with pytest.raises(PromiseExpiredError):
        loop.run()


@pytest.mark.parametrize("status, error", [
    (401, AuthenticationError), (403, PermissionDeniedError), (404, NotFoundError), (409, ConflictError),
    (422, UnprocessableEntityError),
])
def test_other_4xx_are_final(status: int, error: type) -> None:
    loop = Loop((status, {"detail": "no"}))
    with pytest.raises(Final) as raised:
        loop.run()
    assert isinstance(raised.value.error, error)
    assert len(loop.polls) == 1


def test_the_deadline_ends_polling_with_a_timeout() -> None:
    loop = Loop({"type": "try_again"}, deadline_in=1.0)
    with pytest.raises(APITimeoutError) as raised:
        loop.run()
    assert raised.value.request_id == "req-1"
    assert "timeout" in loop.events
    assert loop.time.now <= 1000.0 + 1.0 + 1e-9  # never slept past the deadline


def test_cancel_unwinds_with_the_request_id() -> None:
    loop = Loop({"type": "try_again"})

    def cancel(_recorded: Any) -> dict:
        loop.cancel.set()
        return {"type": "try_again"}

    loop.transport.on(PATH, cancel)
    loop.transport._scripts[PATH].popleft()  # start with the cancelling answer
    with pytest.raises(Cancelled) as raised:
        loop.run()
    assert raised.value.request_id == "req-1"


def test_a_closed_transport_ends_polling() -> None:
    loop = Loop({"type": "try_again"})
    loop.transport.close()
    with pytest.raises(ClientClosedError):
        loop.run()


def test_metadata_again_after_asking_for_the_result_is_a_decode_error() -> None:
    loop = Loop({"status": "complete_metadata", "response_payload_size": 8},
                {"status": "complete_metadata", "response_payload_size": 8})
    with pytest.raises(DecodeError):
        loop.run()


def test_a_json_array_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        Loop([1, 2]).run()


@pytest.mark.parametrize("body", [b"<html>gateway timeout</html>", b"[]", b'{"detail": "slow"}'])
def test_a_408_without_a_queue_state_repolls_and_reports_nothing(body: bytes) -> None:
    loop = Loop((408, body), result_bytes())
    loop.run()
    assert len(loop.polls) == 2 and loop.events == ["poll_408"]
    assert loop.queue_states == []


def test_complete_metadata_without_a_size_reserves_nothing_and_asks_for_the_result() -> None:
    loop = Loop({"status": "complete_metadata"}, result_bytes())
    assert loop.run().sequences[0].tokens == [7, 8, 9]
    assert loop.reserved == []
    assert [p.body["allow_metadata_only"] for p in loop.polls] == [True, False]
