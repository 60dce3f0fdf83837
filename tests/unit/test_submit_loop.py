"""The submit loop (protocol.md 4.8, 7.1 layer 2, 7.3, 7.4, 7.6) over the in-memory transport.

Time is virtual: a one-minute resubmit window runs in milliseconds, and every pause the loop
takes is checked exactly.
"""

from __future__ import annotations

import pytest

from tests.support.loops import Rig, call, promise
from tinkex._sampling.future import Cancelled, Final
from tinkex.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PromiseExpiredError,
    UnprocessableEntityError,
)
from tinkex.types import QueueState


def test_accepted_at_once_sends_one_asample_with_its_seq_id() -> None:
    rig = Rig()
    rig.transport.on("asample", promise(7))
    answer = rig.submitter.asample(rig.state, call(), seq_id=7)
    assert answer.request_id == "req-7"
    (sent,) = rig.transport.calls_to("asample")
    assert sent.body["seq_id"] == 7 and sent.body["sampling_session_id"] == "sess-1:sample:0"
    assert sent.headers["X-Tinker-Sampling-Backpressure"] == "1"
    assert sent.headers["x-stainless-retry-count"] == "0"  # no HTTP-layer retries on asample


@pytest.mark.parametrize("status, body", [(408, b"{}"), (409, b"{}"), (500, b"{}"), (503, b""), (400, b"")])
def test_transient_answers_resend_the_same_seq_id_after_1_2_4_s(status: int, body: bytes) -> None:
    rig = Rig()
    rig.transport.on("asample", (status, body), (status, body), (status, body), promise(3))
    assert rig.submitter.asample(rig.state, call(), seq_id=3).request_id == "req-3"
    assert rig.seq_ids() == [3, 3, 3, 3]
    assert rig.time.sleeps == [1.0, 2.0, 4.0]
    assert rig.telemetry.snapshot().resubmissions == 3


def test_connection_errors_resend_too() -> None:
    rig = Rig()
    rig.transport.on("asample", APIConnectionError("refused", url="u"), promise(0))
    rig.submitter.asample(rig.state, call(), seq_id=0)
    assert rig.seq_ids() == [0, 0] and rig.time.sleeps == [1.0]


def test_the_resubmit_window_is_one_minute() -> None:
    rig = Rig()
    rig.transport.on("asample", (503, b"{}"))
    with pytest.raises(InternalServerError):
        rig.submitter.asample(rig.state, call(), seq_id=0)
    # 1+2+4+8+16+30 = 61 > 60: the sixth pause would end past the window
    assert rig.time.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert sum(rig.time.sleeps) <= 60.0


def test_an_unreachable_host_for_the_whole_window_is_final() -> None:
    """Refused connections until the window closes: the whole-call layer must not start over."""
    rig = Rig()
    rig.transport.on("asample", APIConnectionError("POST http://fake.invalid/api/v1/asample failed: connection "
                                                   "refused (no server is listening there)", url="u"))
    with pytest.raises(Final) as caught:
        rig.submitter.asample(rig.state, call(), seq_id=0)
    assert isinstance(caught.value.error, APIConnectionError)
    assert rig.time.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]


def test_a_sample_against_an_unreachable_host_fails_after_the_window_without_whole_call_retries() -> None:
    rig = Rig()
    rig.transport.on("asample", APIConnectionError("refused", url="u"))
    with pytest.raises(APIConnectionError):
        rig.sampler.execute(rig.state, call())
    assert rig.seq_ids() == [0] * 6  # one seq_id: the first attempt only
    assert sum(rig.time.sleeps) == 31.0


def test_a_deadline_stops_resubmits_before_a_pause_would_cross_it() -> None:
    rig = Rig()
    rig.transport.on("asample", (502, b"{}"))
    with pytest.raises(InternalServerError):
        rig.submitter.asample(rig.state, call(deadline=rig.time.now + 5.0), seq_id=0)
    assert rig.time.sleeps == [1.0, 2.0]  # the next pause (4 s) would end after the deadline


@pytest.mark.parametrize("status, error", [
    (400, BadRequestError), (401, AuthenticationError), (403, PermissionDeniedError), (404, NotFoundError),
    (410, PromiseExpiredError), (422, UnprocessableEntityError),
])
def test_other_4xx_raise_at_once(status: int, error: type) -> None:
    rig = Rig()
    rig.transport.on("asample", (status, {"detail": "no"}))
    with pytest.raises(error):
        rig.submitter.asample(rig.state, call(), seq_id=0)
    assert rig.seq_ids() == [0] and rig.time.sleeps == []


@pytest.mark.parametrize("size, pause", [(100, 1.0), (200 * 1024, 5.0)])
def test_429_backs_off_the_whole_session_then_resends_the_same_seq_id(size: int, pause: float) -> None:
    rig = Rig()
    rig.transport.on("asample", (429, {"queue_state": "paused_rate_limit", "queue_state_reason": "busy"}),
                     promise(4))
    rig.submitter.asample(rig.state, call(estimated_bytes=size), seq_id=4)
    assert rig.seq_ids() == [4, 4]
    assert rig.time.sleeps == [pause]  # waited out on the session's backoff gate
    assert rig.limits.backoff.throttled()  # later submits are throttled for 10 s
    assert rig.observer.reports == [(QueueState.PAUSED_RATE_LIMIT, "busy")]


def test_402_pauses_within_the_billing_window_then_raises() -> None:
    rig = Rig(billing_exception_max_pause_duration_sec=12.0)
    rig.transport.on("asample", (402, {"detail": "pay"}))
    with pytest.raises(BillingError):
        rig.submitter.asample(rig.state, call(), seq_id=0)
    assert rig.time.sleeps == [5.0, 5.0, 5.0]  # the 4th 402 comes 15 s into a 12 s window
    assert set(rig.seq_ids()) == {0}


def test_402_then_accepted() -> None:
    rig = Rig()
    rig.transport.on("asample", (402, {"detail": "pay"}), promise(0))
    assert rig.submitter.asample(rig.state, call(), seq_id=0).request_id == "req-0"
    assert rig.time.sleeps == [5.0]


def test_cancel_before_a_resend_unwinds_quietly() -> None:
    rig = Rig()
    the_call = call()

    def cancel_then_fail(_recorded: object) -> tuple:
        the_call.cancel.set()
        return 503, b"{}"

    rig.transport.on("asample", cancel_then_fail)
    with pytest.raises(Cancelled):
        rig.submitter.asample(rig.state, the_call, seq_id=0)
    assert rig.seq_ids() == [0]


def test_a_closed_transport_stops_the_loop() -> None:
    rig = Rig()
    rig.transport.close()
    with pytest.raises(ClientClosedError):
        rig.submitter.asample(rig.state, call(), seq_id=0)
    assert rig.transport.calls == []


def test_a_result_instead_of_a_promise_is_accepted() -> None:
    rig = Rig()
    rig.transport.on("asample", {"sequences": [{"tokens": [1, 2], "stop_reason": "length"}]})
    answer = rig.submitter.asample(rig.state, call(), seq_id=0)
    assert answer.sequences[0].tokens == [1, 2]


@pytest.mark.parametrize("body", [b"slow down", b"[]", b"{}"])
def test_a_429_without_a_queue_state_backs_off_and_reports_nothing(body: bytes) -> None:
    rig = Rig()
    rig.transport.on("asample", (429, body), promise(3))
    assert rig.submitter.asample(rig.state, call(), seq_id=3).request_id == "req-3"
    assert rig.seq_ids() == [3, 3] and rig.time.sleeps == [1.0]
    assert rig.observer.reports == []
