"""In-process telemetry counters and the batched session reporter (protocol.md 4.13, 7.9)."""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from typing import Any, Dict, Iterator, List, Mapping, Optional

import attrs
import pytest

from tinkex import errors
from tinkex._clock import Clock
from tinkex.errors import ValidationError
from tinkex.telemetry import Telemetry, TelemetryReporter
from tinkex.types import RequestErrorCategory

LOGGER_NAME = "tinkex.telemetry"
API_KEY = "tml-" + "Secr3tKeyMaterial" * 3
JWT_KEY = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl"
WAIT = 5.0


# --- Telemetry ------------------------------------------------------------------------------


def test_counters_count_each_event() -> None:
    telemetry = Telemetry()
    for event in ["submission", "submission", "resubmission", "rate_limited", "try_again", "try_again",
                  "try_again", "cancelled", "timeout", "completed"]:
        telemetry.record(event)
    telemetry.record("retry", cause="server")
    telemetry.record("retry", cause="server")
    telemetry.record("retry", cause="connection")
    telemetry.record("retry")
    telemetry.record("failure", category=RequestErrorCategory.USER)
    telemetry.record("failure", category="server")
    snap = telemetry.snapshot()
    assert (snap.submissions, snap.resubmissions, snap.rate_limited, snap.try_agains, snap.cancelled,
            snap.timeouts, snap.completed) == (2, 1, 1, 3, 1, 1, 1)
    assert snap.retries_by_cause == {"server": 2, "connection": 1, "unknown": 1}
    assert snap.failures_by_category == {"user": 1, "server": 1}


def test_percentiles_use_nearest_rank_and_none_without_data() -> None:
    telemetry = Telemetry()
    snap = telemetry.snapshot()
    assert (snap.latency_p50, snap.latency_p95, snap.latency_p99) == (None, None, None)
    for ms in range(100, 0, -1):
        telemetry.record("completed", latency=ms / 1000)
    snap = telemetry.snapshot()
    assert (snap.latency_p50, snap.latency_p95, snap.latency_p99) == (0.05, 0.095, 0.099)


def test_percentiles_cover_the_last_thousand_completions() -> None:
    telemetry = Telemetry()
    for _ in range(500):
        telemetry.record("completed", latency=100.0)
    for _ in range(1000):
        telemetry.record("completed", latency=1.0)
    snap = telemetry.snapshot()
    assert snap.completed == 1500
    assert snap.latency_p99 == 1.0


def test_unknown_event_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        Telemetry().record("submited")
    assert info.value.field == "event" and info.value.value == "submited"


def test_snapshot_is_frozen_and_detached() -> None:
    telemetry = Telemetry()
    telemetry.record("retry", cause="server")
    snap = telemetry.snapshot()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        snap.completed = 5  # type: ignore[misc]
    telemetry.record("retry", cause="server")
    assert snap.retries_by_cause == {"server": 1}


def test_listeners_get_every_event_and_a_broken_one_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    telemetry = Telemetry()
    seen: List[tuple] = []

    def broken(event: str, fields: Mapping[str, Any]) -> None:
        raise RuntimeError("listener bug")

    def good(event: str, fields: Mapping[str, Any]) -> None:
        seen.append((event, dict(fields)))

    telemetry.add_listener(broken)
    telemetry.add_listener(good)
    telemetry.record("completed", latency=0.5)
    assert seen == [("completed", {"latency": 0.5})]
    assert telemetry.snapshot().completed == 1
    assert any("listener bug" in r.getMessage() for r in caplog.records)
    telemetry.remove_listener(good)
    telemetry.remove_listener(good)
    telemetry.record("submission")
    assert len(seen) == 1


def test_listener_runs_outside_the_lock() -> None:
    telemetry = Telemetry()
    telemetry.add_listener(lambda event, fields: telemetry.snapshot())  # would deadlock under the lock
    telemetry.record("submission")
    assert telemetry.snapshot().submissions == 1


def test_concurrent_records_lose_no_updates() -> None:
    telemetry = Telemetry()
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(2000):
            telemetry.record("submission")
            telemetry.record("retry", cause="server")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = telemetry.snapshot()
    assert snap.submissions == 16000 and snap.retries_by_cause == {"server": 16000}


# --- TelemetryReporter ----------------------------------------------------------------------


class FakeSend:
    """Records payloads; can fail or block on demand."""

    def __init__(self) -> None:
        self.payloads: List[Dict[str, Any]] = []
        self.cond = threading.Condition()
        self.fail_with: Optional[BaseException] = None
        self.gate: Optional[threading.Event] = None
        self.entered = threading.Event()

    def __call__(self, payload: Dict[str, Any]) -> None:
        json.dumps(payload)  # the payload must be JSON as it is
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(WAIT)
        with self.cond:
            self.payloads.append(payload)
            self.cond.notify_all()
        if self.fail_with is not None:
            raise self.fail_with

    def wait_for(self, count: int) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.payloads) >= count, WAIT)

    @property
    def events(self) -> List[Dict[str, Any]]:
        return [event for payload in self.payloads for event in payload["events"]]


@pytest.fixture
def send() -> FakeSend:
    return FakeSend()


@pytest.fixture
def make_reporter(send: FakeSend) -> Iterator[Any]:
    made: List[TelemetryReporter] = []

    def make(**kwargs: Any) -> TelemetryReporter:
        kwargs.setdefault("flush_interval", 3600.0)
        reporter = TelemetryReporter(send, session_id="sess-1", sdk_version="0.1.0", **kwargs)
        made.append(reporter)
        return reporter

    yield make
    for reporter in made:
        reporter.close(timeout=1.0)


def telemetry_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tinkex-telemetry"]


def test_payload_and_event_shape(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter()
    reporter.session_start()
    reporter.session_end(2.512345)
    reporter.close()
    (payload,) = send.payloads
    assert set(payload) == {"events", "platform", "sdk_version", "session_id", "process_uuid"}
    assert (payload["sdk_version"], payload["session_id"]) == ("0.1.0", "sess-1")
    assert uuid.UUID(payload["process_uuid"])
    start, end = payload["events"]
    assert (start["event"], end["event"]) == ("SESSION_START", "SESSION_END")
    assert (start["event_session_index"], end["event_session_index"]) == (0, 1)
    assert end["duration"] == "0:00:02.512345"
    for event in payload["events"]:
        assert uuid.UUID(event["event_id"]).version == 4
        assert event["severity"] == "INFO"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["timestamp"])


def test_events_leave_in_batches_of_at_most_one_hundred(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter()
    for n in range(250):
        reporter.generic_event("step", {"n": n})
    reporter.close()
    assert [len(p["events"]) for p in send.payloads] == [100, 100, 50]
    assert [e["event_session_index"] for e in send.events] == list(range(250))
    assert [e["event_data"]["n"] for e in send.events] == list(range(250))


def test_a_full_batch_is_sent_without_waiting_for_the_interval(send: FakeSend, make_reporter: Any) -> None:
    make_reporter_instance = make_reporter()
    for _ in range(100):
        make_reporter_instance.session_start()
    assert send.wait_for(1)
    assert len(send.payloads[0]["events"]) == 100


def test_the_flush_interval_sends_a_partial_batch(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter(flush_interval=0.01)
    reporter.session_start()
    assert send.wait_for(1)


def test_flush_sends_what_is_queued(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter()
    assert reporter.flush()  # nothing queued, no thread: trivially drained
    reporter.session_start()
    reporter.session_start()
    assert reporter.flush()
    assert len(send.events) == 2


def test_close_flushes_stops_the_thread_and_is_idempotent(send: FakeSend, make_reporter: Any) -> None:
    before = set(telemetry_threads())
    reporter = make_reporter()
    assert set(telemetry_threads()) == before  # started lazily
    reporter.session_start()
    (thread,) = set(telemetry_threads()) - before
    assert thread.daemon
    reporter.close()
    reporter.close()
    assert not thread.is_alive()
    assert [event["event"] for event in send.events] == ["SESSION_START", "SESSION_END"]
    reporter.session_start()  # after close: dropped quietly
    assert len(send.events) == 2


def test_queue_overflow_drops_with_one_warning_per_episode(send: FakeSend, make_reporter: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    reporter = make_reporter(max_queue=5)
    for _ in range(8):
        reporter.session_start()
    assert reporter.flush()
    for _ in range(8):
        reporter.session_start()
    reporter.close()
    assert len(send.events) == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["Telemetry queue full (5), dropping event"] * 2


def test_a_failing_send_drops_the_batch_and_warns_once_per_streak(send: FakeSend, make_reporter: Any,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    reporter = make_reporter()
    send.fail_with = ConnectionError(f"refused while sending with {API_KEY}")
    for _ in range(3):
        reporter.session_start()
        reporter.flush()
    send.fail_with = None
    reporter.session_start()
    reporter.flush()
    send.fail_with = ConnectionError("refused")
    reporter.session_start()
    reporter.close()
    assert len(send.payloads) == 5
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert [r.levelno for r in dropped] == [logging.WARNING, logging.DEBUG, logging.DEBUG, logging.WARNING]
    assert all(API_KEY not in r.getMessage() for r in caplog.records)


def test_close_drain_is_bounded_by_its_timeout(send: FakeSend, make_reporter: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    send.gate = threading.Event()
    reporter = make_reporter()
    before = set(telemetry_threads())
    for n in range(150):
        reporter.generic_event("step", {"n": n})
    (thread,) = set(telemetry_threads()) - before
    assert send.entered.wait(WAIT)
    reporter.close(timeout=0.05)  # the first batch is stuck in send
    assert thread.is_alive()
    send.gate.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [len(p["events"]) for p in send.payloads] == [100]
    assert "Telemetry drain timed out; dropping 50 events" in [r.getMessage() for r in caplog.records]


def test_log_event_never_raises(send: FakeSend, make_reporter: Any) -> None:
    class Hostile(dict):
        def items(self) -> Any:
            raise RuntimeError("no")

    reporter = make_reporter()
    reporter.generic_event("x", Hostile(a=1))
    reporter.log_event("CUSTOM", severity="bogus", note=object())
    reporter.close()
    (event,) = send.events
    assert event["severity"] == "INFO" and event["note"] == "<object>"


def test_no_api_key_or_prompt_contents_in_any_payload(send: FakeSend, make_reporter: Any) -> None:
    custom_secret = "my-own-format-key-123"
    reporter = make_reporter(secrets=[custom_secret])
    reporter.exception(ValueError(f"bad key {API_KEY}"))
    reporter.exception(RuntimeError(f"Authorization: Bearer {JWT_KEY}"))
    reporter.generic_event("user_error", {
        "auth": f"Bearer {API_KEY}", "key": API_KEY, "jwt": JWT_KEY, "custom": custom_secret,
        "headers": {"X-API-Key": API_KEY}, "prompt": [101, 102, 103], "status": 400, "retried": False,
    })
    reporter.log_event("GENERIC_EVENT", event_name="x", event_data={"h": f"x-api-key: {API_KEY}"}, note=API_KEY)
    reporter.close()
    text = json.dumps(send.payloads)
    for secret in (API_KEY, JWT_KEY, custom_secret, "Secr3tKeyMaterial", "101, 102"):
        assert secret not in text
    first, second, generic, _ = send.events
    assert (first["event"], first["error_type"], first["severity"]) == ("UNHANDLED_EXCEPTION", "ValueError", "ERROR")
    assert first["error_message"] == "bad key <redacted>"
    assert "traceback" not in first
    data = generic["event_data"]
    assert (data["prompt"], data["headers"], data["status"], data["retried"]) == ("<list>", "<dict>", 400, False)
    assert generic["event_name"] == "user_error"


def test_long_messages_are_capped(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter()
    reporter.exception(ValueError("x" * 5000))
    reporter.close()
    assert len(send.events[0]["error_message"]) <= 1001


@pytest.mark.parametrize("error, user", [
    (errors.BadRequestError("bad", status_code=400), True),
    (errors.NotFoundError("gone", status_code=404), True),
    (errors.RateLimitError("slow", status_code=429), True),
    (errors.APIStatusError("late", status_code=408), False),
    (errors.InternalServerError("boom", status_code=500), False),
    (errors.RequestFailedError("x", category="user"), True),
    (errors.RequestFailedError("x", category="server"), False),
    (errors.APIConnectionError("refused", url="http://x"), False),
    (ValueError("plain"), False),
])
def test_user_errors_are_generic_events_and_the_rest_unhandled(send: FakeSend, make_reporter: Any,
                                                              error: BaseException, user: bool) -> None:
    reporter = make_reporter()
    reporter.exception(error)
    reporter.close()
    (event,) = send.events
    if user:
        assert (event["event"], event["severity"], event["event_name"]) == ("GENERIC_EVENT", "WARNING", "user_error")
        assert event["event_data"]["error_type"] == type(error).__name__
    else:
        assert (event["event"], event["severity"], event["error_type"]) == ("UNHANDLED_EXCEPTION", "ERROR",
                                                                           type(error).__name__)


def test_close_ends_a_started_session_with_its_duration(send: FakeSend, make_reporter: Any) -> None:
    now = [100.0]
    reporter = make_reporter(clock=Clock(monotonic=lambda: now[0], wall=lambda: 0.0))
    reporter.session_start()
    now[0] = 102.5
    reporter.close()
    reporter.close()
    assert [(e["event"], e.get("duration")) for e in send.events] == [("SESSION_START", None),
                                                                      ("SESSION_END", "0:00:02.500000")]


def test_enum_values_are_sent_as_their_values(send: FakeSend, make_reporter: Any) -> None:
    reporter = make_reporter()
    reporter.generic_event("failure", {"category": RequestErrorCategory.USER})
    reporter.log_event("CUSTOM", category=RequestErrorCategory.SERVER)
    reporter.close()
    generic, custom = send.events
    assert generic["event_data"] == {"category": RequestErrorCategory.USER.value}
    assert custom["category"] == RequestErrorCategory.SERVER.value


def test_closing_a_drained_reporter_after_its_deadline_drops_nothing(send: FakeSend, make_reporter: Any,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    reporter = make_reporter()
    before = set(telemetry_threads())
    reporter.generic_event("step", {"n": 1})
    (thread,) = set(telemetry_threads()) - before
    assert reporter.flush(WAIT)
    reporter.close(timeout=0.0)  # the drain deadline is now, and the queue is already empty
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [len(p["events"]) for p in send.payloads] == [1]
    assert not any("drain timed out" in r.getMessage() for r in caplog.records)


def test_a_reporter_that_never_queued_closes_without_a_thread(send: FakeSend, make_reporter: Any) -> None:
    before = set(telemetry_threads())
    reporter = make_reporter()
    reporter.close()
    assert set(telemetry_threads()) == before
    assert send.payloads == []
    assert repr(reporter) == "TelemetryReporter(session_id='sess-1', queued=0)"


def test_a_forked_child_gets_its_own_process_uuid(send: FakeSend, make_reporter: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from tinkex import telemetry

    monkeypatch.setattr(telemetry, "_process_uuid", telemetry._process_uuid)  # restored after the test
    parent = telemetry._process_uuid
    telemetry._renew_process_uuid()  # what os.register_at_fork runs in a child
    assert telemetry._process_uuid != parent and uuid.UUID(telemetry._process_uuid)
    reporter = make_reporter()
    reporter.generic_event("step", {})
    reporter.close()
    assert send.payloads[0]["process_uuid"] == telemetry._process_uuid
