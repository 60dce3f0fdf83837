"""Small support modules at their edges: the clock without a sleeper, key redaction with no key,
environment flags, request ids for log lines, the in-memory transport's own failures, how
connection errors are described, admission when a throttled request's byte budget times out,
a closed ServiceClient, and ``python -m tinkex``."""

from __future__ import annotations

import runpy
import sys
import threading
import time
from typing import Any, List

import pytest

import tinkex
import tinkex.cli
from tests.support.virtual_clock import VirtualClock
from tinkex._clock import Clock
from tinkex._config import Config, redact_key, redact_text, secret_forms
from tinkex._http import FakeTransport
from tinkex._http.errors import check_headers, describe, library_error
from tinkex._limits import BackoffGate, DispatchGate
from tinkex._logging import LazyRequestId
from tinkex.errors import APIConnectionError, APITimeoutError, ClientClosedError

KEY = "tml-support-edges-key"

# ---------------------------------------------------------------------------------------------
# The system clock


def test_a_non_positive_sleep_returns_at_once_saying_whether_stop_is_set() -> None:
    clock = Clock()
    stop = threading.Event()
    assert clock.sleep(0) is False
    assert clock.sleep(-1.0, stop) is False
    stop.set()
    assert clock.sleep(0, stop) is True


def test_a_sleep_without_a_stop_event_sleeps_and_reports_not_stopped() -> None:
    started = time.monotonic()
    assert Clock().sleep(0.01) is False
    assert time.monotonic() - started >= 0.009


# ---------------------------------------------------------------------------------------------
# Config and redaction


def test_no_key_has_no_forms_and_redacts_nothing() -> None:
    assert redact_key("") == redact_key(None) == "<unset>"
    assert secret_forms("") == ()
    assert redact_text("tml-abc is fine here", "") == "tml-abc is fine here"


@pytest.mark.parametrize("value, expected", [("1", True), ("YES", True), ("off", False), ("", True), ("maybe", True)])
def test_telemetry_flag_reads_truthy_and_falsy_words(value: str, expected: bool) -> None:
    config = Config.from_env(api_key=KEY, environ={"TINKER_TELEMETRY": value})
    assert config.telemetry is expected


def test_evolve_returns_a_changed_copy() -> None:
    config = Config.from_env(api_key=KEY, base_url="http://a.invalid")
    changed = config.evolve(base_url="http://b.invalid/", timeout=5.0)
    assert (changed.base_url, changed.timeout, changed.api_key) == ("http://b.invalid", 5.0, KEY)
    assert config.base_url == "http://a.invalid"


# ---------------------------------------------------------------------------------------------
# Request ids in log lines


def test_the_request_id_header_wins_over_bodies() -> None:
    assert str(LazyRequestId(b'{"request_id": "from-payload"}', b'{"request_id": "from-answer"}',
                             {"x-request-id": "from-header"})) == "from-header"


@pytest.mark.parametrize("content, payload, expected", [
    (b"{not json", b'{"request_id": "from-payload"}', "from-payload"),
    (b"{not json", None, "-"),
    (b'{"request_id": 7}', b"[]", "-"),
])
def test_unreadable_bodies_fall_back_to_the_next_source(content: bytes, payload: Any, expected: str) -> None:
    assert str(LazyRequestId(payload, content, {})) == expected


# ---------------------------------------------------------------------------------------------
# The in-memory transport


def test_the_fake_fails_loudly_on_an_unscripted_path() -> None:
    fake = FakeTransport()
    with pytest.raises(AssertionError, match="no answer scripted for POST asample"):
        fake.request("POST", "asample", body={})
    assert [call.path for call in fake.calls] == ["asample"]


def test_a_closed_fake_refuses_calls_and_streams() -> None:
    fake = FakeTransport()
    fake.on("asample", {})
    fake.close()
    with pytest.raises(APIConnectionError, match="closed"):
        fake.request("POST", "asample", body={}, max_retries=0)
    with pytest.raises(APIConnectionError, match="closed"):
        fake.open_stream("asample_stream", b"{}", {}, 1.0, None)
    assert fake.calls == []


def test_a_scripted_exception_is_raised_when_a_stream_opens() -> None:
    fake = FakeTransport()
    fake.on("asample_stream", APIConnectionError("reset", url="u"))
    with pytest.raises(APIConnectionError, match="reset"):
        fake.open_stream("asample_stream", b"{}", {}, 1.0, None)


# ---------------------------------------------------------------------------------------------
# Connection errors in words


def test_an_unknown_cause_is_described_by_its_type() -> None:
    assert describe(ValueError("odd")) == "ValueError"
    error = library_error("POST", "http://x/api/v1/asample", KeyError("k"))
    assert type(error) is APIConnectionError and str(error) == "POST http://x/api/v1/asample failed: KeyError"


def test_headers_are_not_checked_without_a_parsed_response() -> None:
    check_headers(object(), "http://x")  # nothing to check: no error
    check_headers(type("Raw", (), {"_original_response": None})(), "http://x")


# ---------------------------------------------------------------------------------------------
# Admission


def test_a_throttled_admission_that_times_out_on_bytes_gives_back_its_slots() -> None:
    time_ = VirtualClock()
    clock = time_.clock()
    backoff = BackoffGate(clock=clock)
    gate = DispatchGate(backoff=backoff, byte_budget=100, clock=clock)
    gate.bytes.acquire(200)  # another request holds more than the budget
    backoff.back_off(5.0)
    admission = gate.admit(10, deadline=time_.now)
    with pytest.raises(APITimeoutError, match="deadline passed while waiting"):
        admission.__enter__()
    assert (gate.slots.remaining, gate.throttled_slots.remaining) == (400, 10)
    assert gate.bytes.remaining == -100 and gate.bytes.waiting == 0


# ---------------------------------------------------------------------------------------------
# The service client and the command module


def test_a_closed_service_client_creates_no_sampling_clients() -> None:
    service = tinkex.ServiceClient(api_key=KEY, base_url="http://127.0.0.1:9")
    service.close()
    with pytest.raises(ClientClosedError, match="closed"):
        service.create_sampling_client_async(base_model="m")


def test_python_dash_m_tinkex_runs_the_cli_only_as_the_main_module(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[int] = []

    def main() -> int:
        calls.append(1)
        return 3

    monkeypatch.setattr(tinkex.cli, "main", main)
    monkeypatch.delitem(sys.modules, "tinkex.__main__", raising=False)
    runpy.run_module("tinkex.__main__", run_name="tinkex.__main__")
    assert calls == []
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("tinkex.__main__", run_name="__main__")
    assert exited.value.code == 3 and calls == [1]


def test_the_log_handler_writes_to_stderr_as_it_is_now_not_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stderr replaced and closed after logging was turned on (a test's capture, a notebook)
    must not turn later lines into "--- Logging error ---" noise: each line goes to the stderr
    of the moment it is written."""
    import io
    import logging

    from tinkex._logging import _StderrHandler

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = _StderrHandler()
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    monkeypatch.setattr(logging, "raiseExceptions", True)  # a failed write would raise here, not print
    handler.emit(logging.LogRecord("tinkex.test", logging.WARNING, __file__, 1, "written %s", ("now",), None))
    assert second.getvalue() == "written now\n"
