"""Queue-state logger, debounce and reporter (client_behaviour 8, 9 and 12: 10-14)."""

from __future__ import annotations

import logging
import threading
from typing import Any, List, Mapping, Tuple

import pytest

from tinkex.queue_state import (
    QueueStateLogger,
    QueueStateObserver,
    QueueStateReporter,
    default_reason,
    format_pause_message,
)
from tinkex.types import QueueState

LOGGER_NAME = "tinkex.queue_state"
META = {"session_id": "sess-1", "sampling_session_id": "sess-1:sample:0"}


class Ticker:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def warnings_of(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME and r.levelno == logging.WARNING]


@pytest.fixture
def caplog_warnings(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    return caplog


# --- texts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action, state, expected", [
    ("Sampling", QueueState.PAUSED_RATE_LIMIT,
     "Sampling is paused for sess-1:sample:0. Reason: concurrent sampler weights limit hit"),
    ("Sampling", QueueState.PAUSED_CAPACITY,
     "Sampling is paused for sess-1:sample:0. Reason: Tinker backend is running short on capacity, please wait"),
    ("Sampling", QueueState.UNKNOWN, "Sampling is paused for sess-1:sample:0. Reason: unknown"),
    ("Training", QueueState.PAUSED_RATE_LIMIT,
     "Training is paused for sess-1:sample:0. Reason: concurrent training clients rate limit hit"),
    ("Training", QueueState.PAUSED_CAPACITY,
     "Training is paused for sess-1:sample:0. Reason: Tinker backend is running short on capacity, please wait"),
    ("Training", QueueState.UNKNOWN, "Training is paused for sess-1:sample:0. Reason: unknown"),
])
def test_exact_log_texts(caplog_warnings: pytest.LogCaptureFixture, action: str, state: QueueState,
                         expected: str) -> None:
    QueueStateLogger(action=action).on_queue_state_change(state, META)
    assert warnings_of(caplog_warnings) == [expected]


def test_active_is_never_logged(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger()
    logger.on_queue_state_change(QueueState.ACTIVE, META)
    logger.on_queue_state_change(QueueState.ACTIVE, {**META, "queue_state_reason": "anything"})
    assert caplog_warnings.records == []
    logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, META)  # active used no debounce slot
    assert len(warnings_of(caplog_warnings)) == 1


def test_server_reason_replaces_the_default_entirely(caplog_warnings: pytest.LogCaptureFixture) -> None:
    QueueStateLogger().on_queue_state_change(
        QueueState.PAUSED_CAPACITY, {**META, "queue_state_reason": "server says wait"})
    assert warnings_of(caplog_warnings) == ["Sampling is paused for sess-1:sample:0. Reason: server says wait"]


@pytest.mark.parametrize("reason", [None, "", 42])
def test_reason_falls_back_to_the_default(caplog_warnings: pytest.LogCaptureFixture, reason: Any) -> None:
    QueueStateLogger().on_queue_state_change(QueueState.PAUSED_RATE_LIMIT, {**META, "queue_state_reason": reason})
    assert warnings_of(caplog_warnings) == [
        "Sampling is paused for sess-1:sample:0. Reason: concurrent sampler weights limit hit"]


def test_state_given_as_a_string_is_understood(caplog_warnings: pytest.LogCaptureFixture) -> None:
    QueueStateLogger().on_queue_state_change("paused_capacity", META)  # type: ignore[arg-type]
    assert "running short on capacity, please wait" in warnings_of(caplog_warnings)[0]


def test_helpers() -> None:
    assert default_reason(QueueState.PAUSED_RATE_LIMIT) == "concurrent sampler weights limit hit"
    assert default_reason(QueueState.ACTIVE) == "unknown"
    assert format_pause_message("Sampling", "x", "y") == "Sampling is paused for x. Reason: y"


def test_a_given_logger_is_used(caplog: pytest.LogCaptureFixture) -> None:
    custom = logging.getLogger("tests.custom_queue_state")
    caplog.set_level(logging.WARNING, logger=custom.name)
    QueueStateLogger(logger=custom).on_queue_state_change(QueueState.UNKNOWN, META)
    assert [r.name for r in caplog.records] == [custom.name]


# --- debounce -------------------------------------------------------------------------------


def test_debounce_is_sixty_seconds_per_identifier(caplog_warnings: pytest.LogCaptureFixture) -> None:
    ticker = Ticker()
    logger = QueueStateLogger(clock=ticker)
    for now, logs in [(0.0, True), (30.0, False), (59.9, False), (61.0, True), (91.0, False), (121.0, True)]:
        ticker.now = now
        before = len(warnings_of(caplog_warnings))
        logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, META)
        assert (len(warnings_of(caplog_warnings)) > before) == logs, now


def test_exactly_the_interval_later_logs(caplog_warnings: pytest.LogCaptureFixture) -> None:
    ticker = Ticker()
    logger = QueueStateLogger(clock=ticker, interval=60.0)
    logger.on_queue_state_change(QueueState.UNKNOWN, META)
    ticker.now = 60.0
    logger.on_queue_state_change(QueueState.UNKNOWN, META)
    assert len(warnings_of(caplog_warnings)) == 2


def test_one_slot_per_identifier_not_per_state(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger(clock=Ticker())
    logger.on_queue_state_change(QueueState.PAUSED_RATE_LIMIT, META)
    logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, META)
    logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, {"sampling_session_id": "other"})
    assert warnings_of(caplog_warnings) == [
        "Sampling is paused for sess-1:sample:0. Reason: concurrent sampler weights limit hit",
        "Sampling is paused for other. Reason: Tinker backend is running short on capacity, please wait",
    ]


def test_clear_lets_the_next_warning_through(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger(clock=Ticker())
    logger.clear("never-seen")
    logger.on_queue_state_change(QueueState.UNKNOWN, META)
    logger.on_queue_state_change(QueueState.UNKNOWN, META)
    logger.clear("sess-1:sample:0")
    logger.on_queue_state_change(QueueState.UNKNOWN, META)
    assert len(warnings_of(caplog_warnings)) == 2


@pytest.mark.parametrize("metadata, identifier", [
    ({"sampling_session_id": "samp", "session_id": "sess"}, "samp"),
    ({"sampling_session_id": "", "session_id": "sess"}, "sess"),
    ({"session_id": "sess"}, "sess"),
    ({}, "unknown"),
])
def test_identifier_fallback(caplog_warnings: pytest.LogCaptureFixture, metadata: Mapping[str, Any],
                             identifier: str) -> None:
    QueueStateLogger().on_queue_state_change(QueueState.UNKNOWN, metadata)
    assert warnings_of(caplog_warnings) == [f"Sampling is paused for {identifier}. Reason: unknown"]


def test_debounce_store_is_bounded(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger(clock=Ticker(), maxsize=1)
    for identifier in ("a", "b", "a"):  # "a" was evicted by "b", so it logs again
        logger.on_queue_state_change(QueueState.UNKNOWN, {"sampling_session_id": identifier})
    assert len(warnings_of(caplog_warnings)) == 3


def test_concurrent_first_reports_log_once(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger()
    start = threading.Barrier(16)

    def report() -> None:
        start.wait()
        logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, META)

    threads = [threading.Thread(target=report) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(warnings_of(caplog_warnings)) == 1


# --- reporter -------------------------------------------------------------------------------


class TwoArg:
    def __init__(self) -> None:
        self.calls: List[Tuple[QueueState, Mapping[str, Any]]] = []

    def on_queue_state_change(self, state: QueueState, metadata: Mapping[str, Any]) -> None:
        self.calls.append((state, metadata))


class OneArg:
    def __init__(self) -> None:
        self.calls: List[QueueState] = []

    def on_queue_state_change(self, queue_state: QueueState) -> None:
        self.calls.append(queue_state)


class VarArgs:
    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def on_queue_state_change(self, *args: Any) -> None:
        self.calls.append(args)


class Exploding:
    def __init__(self) -> None:
        self.calls = 0

    def on_queue_state_change(self, state: QueueState, metadata: Mapping[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")


def test_two_argument_observer_gets_state_and_metadata() -> None:
    observer = TwoArg()
    assert isinstance(observer, QueueStateObserver)
    QueueStateReporter(observer, META).report(QueueState.PAUSED_RATE_LIMIT, "server throttle", "req-1")
    assert observer.calls == [(QueueState.PAUSED_RATE_LIMIT, {
        **META, "request_id": "req-1", "queue_state": "paused_rate_limit", "queue_state_reason": "server throttle"})]


def test_one_argument_observer_gets_the_state_only() -> None:
    observer = OneArg()
    QueueStateReporter(observer, META).report(QueueState.PAUSED_CAPACITY, None, "req-1")
    assert observer.calls == [QueueState.PAUSED_CAPACITY]


def test_varargs_observer_gets_both() -> None:
    observer = VarArgs()
    QueueStateReporter(observer, META).report(QueueState.UNKNOWN, None, "req-1")
    assert len(observer.calls) == 1 and len(observer.calls[0]) == 2


class KeywordMetadata:
    def __init__(self) -> None:
        self.calls: List[Any] = []

    def on_queue_state_change(self, state: QueueState, *, metadata: Any = None) -> None:
        self.calls.append((state, metadata))


class Unreadable:
    """A callable whose signature inspect cannot read."""

    __signature__ = "not a Signature"

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


def test_keyword_only_parameters_do_not_count_as_taking_metadata() -> None:
    observer = KeywordMetadata()
    QueueStateReporter(observer, META).report(QueueState.PAUSED_CAPACITY, None, "req-1")
    assert observer.calls == [(QueueState.PAUSED_CAPACITY, None)]


def test_an_observer_of_unreadable_signature_gets_state_and_metadata() -> None:
    callback = Unreadable()
    observer = type("Observer", (), {})()
    observer.on_queue_state_change = callback
    QueueStateReporter(observer, META).report(QueueState.PAUSED_RATE_LIMIT, None, "req-1")
    assert len(callback.calls) == 1
    state, metadata = callback.calls[0]
    assert state is QueueState.PAUSED_RATE_LIMIT and metadata["request_id"] == "req-1"


def test_only_changes_are_reported_per_request() -> None:
    observer = OneArg()
    reporter = QueueStateReporter(observer, META)
    reports = [
        (QueueState.ACTIVE, None, "r1"),  # the starting state: nothing to say
        (QueueState.PAUSED_CAPACITY, None, "r1"),
        (QueueState.PAUSED_CAPACITY, None, "r1"),
        (QueueState.PAUSED_CAPACITY, "now a reason", "r1"),
        (QueueState.PAUSED_CAPACITY, None, "r2"),  # another request has its own memory
        (QueueState.PAUSED_RATE_LIMIT, "now a reason", "r1"),
        (QueueState.ACTIVE, None, "r1"),
    ]
    for state, reason, request_id in reports:
        reporter.report(state, reason, request_id)
    assert observer.calls == [QueueState.PAUSED_CAPACITY, QueueState.PAUSED_CAPACITY, QueueState.PAUSED_CAPACITY,
                              QueueState.PAUSED_RATE_LIMIT, QueueState.ACTIVE]


def test_forget_starts_a_request_afresh() -> None:
    observer = OneArg()
    reporter = QueueStateReporter(observer, META)
    reporter.report(QueueState.UNKNOWN, None, "r1")
    reporter.forget("r1")
    reporter.forget("never-seen")
    reporter.report(QueueState.UNKNOWN, None, "r1")
    assert observer.calls == [QueueState.UNKNOWN, QueueState.UNKNOWN]


def test_crashing_observer_is_logged_and_contained(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER_NAME)
    observer = Exploding()
    reporter = QueueStateReporter(observer, META)
    reporter.report(QueueState.PAUSED_CAPACITY, None, "r1")
    reporter.report(QueueState.PAUSED_RATE_LIMIT, None, "r1")
    assert observer.calls == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in errors] == ["QueueStateObserver Exploding crashed: observer bug"] * 2


@pytest.mark.parametrize("observer", [None, object()])
def test_missing_observer_or_callback_is_ignored(observer: Any) -> None:
    QueueStateReporter(observer, META).report(QueueState.UNKNOWN, None, "r1")


def test_reporter_with_the_default_logger_logs_the_server_reason(caplog_warnings: pytest.LogCaptureFixture) -> None:
    reporter = QueueStateReporter(QueueStateLogger(), META)
    reporter.report(QueueState.PAUSED_CAPACITY, "server says wait", "r1")
    reporter.report(QueueState.PAUSED_CAPACITY, "server says wait", "r1")
    assert warnings_of(caplog_warnings) == ["Sampling is paused for sess-1:sample:0. Reason: server says wait"]


def test_concurrent_identical_reports_reach_the_observer_once() -> None:
    observer = OneArg()
    reporter = QueueStateReporter(observer, META)
    start = threading.Barrier(16)

    def report() -> None:
        start.wait()
        reporter.report(QueueState.PAUSED_CAPACITY, "busy", "r1")

    threads = [threading.Thread(target=report) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert observer.calls == [QueueState.PAUSED_CAPACITY]


def test_clear_takes_the_session_id_for_all_its_sampling_sessions(caplog_warnings: pytest.LogCaptureFixture) -> None:
    logger = QueueStateLogger(clock=Ticker())
    second = {"session_id": "sess-1", "sampling_session_id": "sess-1:sample:1"}
    other = {"session_id": "sess-2", "sampling_session_id": "sess-2:sample:0"}
    for metadata in (META, second, other):
        logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, metadata)
    logger.clear("sess-1")
    for metadata in (META, second, other):
        logger.on_queue_state_change(QueueState.PAUSED_CAPACITY, metadata)
    logged = [message.split(".")[0] for message in warnings_of(caplog_warnings)]
    assert logged == ["Sampling is paused for sess-1:sample:0", "Sampling is paused for sess-1:sample:1",
                      "Sampling is paused for sess-2:sample:0",
                      "Sampling is paused for sess-1:sample:0", "Sampling is paused for sess-1:sample:1"]
