"""The HTTP layer's retry loop (protocol.md 7.1 layer 1) over the in-memory transport."""

from __future__ import annotations

import errno

import pytest

from tests.support.virtual_clock import VirtualClock
from tinkex._config import Config
from tinkex._http import FakeTransport
from tinkex._http.pool import send_request
from tinkex._http.transport import Transport
from tinkex.errors import APIConnectionError, APITimeoutError, AuthenticationError, InternalServerError


def transport(max_retries: int = 10) -> tuple:
    time_ = VirtualClock(random=0.0)
    config = Config.from_env(api_key="tml-http-layer", base_url="http://fake.invalid", max_retries=max_retries)
    return FakeTransport(config, clock=time_.clock()), time_


def test_a_retried_call_keeps_its_idempotency_key_and_counts_its_retries() -> None:
    fake, time_ = transport()
    fake.on("create_session", (503, b"{}"), (429, b"{}"), APIConnectionError("reset", url="u"), {"session_id": "s"})
    assert fake.request("POST", "create_session", body={}).json("x") == {"session_id": "s"}
    calls = fake.calls_to("create_session")
    assert len({c.headers["X-Idempotency-Key"] for c in calls}) == 1
    assert [c.headers["x-stainless-retry-count"] for c in calls] == ["0", "1", "2", "3"]
    assert time_.sleeps == [0.5, 1.0, 2.0]  # min(0.5 * 2^n, 10) at the jitter's top (random 0)


def test_retry_after_is_honoured_up_to_sixty_seconds() -> None:
    fake, time_ = transport()
    fake.on("create_session", (503, b"{}", {"retry-after": "7"}), (503, b"{}", {"retry-after-ms": "250"}),
            (503, b"{}", {"retry-after": "120"}), {"session_id": "s"})
    fake.request("POST", "create_session", body={})
    assert time_.sleeps == [7.0, 0.25, 2.0]  # 120 s is over the cap: the computed delay instead


def test_max_retries_bounds_the_loop_and_the_last_answer_is_raised() -> None:
    fake, time_ = transport(max_retries=2)
    fake.on("create_session", (500, {"detail": "down"}))
    with pytest.raises(InternalServerError):
        fake.request("POST", "create_session", body={})
    assert len(fake.calls_to("create_session")) == 3


def test_a_final_status_is_raised_at_once() -> None:
    fake, time_ = transport()
    fake.on("create_session", (401, {"detail": "invalid API key"}))
    with pytest.raises(AuthenticationError) as raised:
        fake.request("POST", "create_session", body={})
    assert raised.value.status_code == 401 and time_.sleeps == []


def test_a_bare_400_is_a_connection_error_once_retries_run_out() -> None:
    fake, _ = transport(max_retries=1)
    fake.on("create_session", (400, b""))
    with pytest.raises(APIConnectionError, match="proxy rejection"):
        fake.request("POST", "create_session", body={})
    assert len(fake.calls_to("create_session")) == 2


def test_no_retry_sleeps_past_the_deadline() -> None:
    fake, time_ = transport()
    fake.on("create_session", (503, b"{}"))
    with pytest.raises(APITimeoutError):
        fake.request("POST", "create_session", body={}, deadline=time_.now + 1.2)
    assert sum(time_.sleeps) <= 1.2


def test_a_closed_transport_abandons_the_retry_wait() -> None:
    fake, _ = transport()

    def close_then_fail(_call: object) -> tuple:
        fake.close()
        return 503, b"{}"

    fake.on("create_session", close_then_fail)
    with pytest.raises(APIConnectionError, match="closing|closed"):
        fake.request("POST", "create_session", body={})


def test_cloudflare_access_credentials_go_in_every_call() -> None:
    env = {"CLOUDFLARE_ACCESS_CLIENT_ID": "cf-id.access", "CLOUDFLARE_ACCESS_CLIENT_SECRET": "cf-secret"}
    config = Config.from_env(api_key="tml-http-layer", base_url="http://fake.invalid", environ=env)
    fake = FakeTransport(config, clock=VirtualClock().clock())
    fake.on("healthz", {"status": "ok"})
    fake.request("GET", "healthz")
    (sent,) = fake.calls
    assert sent.headers["CF-Access-Client-Id"] == "cf-id.access"
    assert sent.headers["CF-Access-Client-Secret"] == "cf-secret"
    assert fake.base_url == "http://fake.invalid"


def test_a_deadline_already_past_sends_nothing() -> None:
    fake, time_ = transport()
    fake.on("create_session", {"session_id": "s"})
    with pytest.raises(APITimeoutError, match="deadline passed before it was sent"):
        fake.request("POST", "create_session", body={}, deadline=time_.now)
    assert fake.calls == [] and time_.sleeps == []  # a deadline is never retried


def test_the_shared_timeouts_stay_few_however_many_read_timeouts_calls_use() -> None:
    real = Transport(Config.from_env(api_key="tml-http-layer", base_url="http://fake.invalid", connect_timeout=3.0))
    try:
        built = [real._urllib3_timeout(float(seconds), None) for seconds in range(1, 41)]
        assert [t.read_timeout for t in built] == [float(s) for s in range(1, 41)]
        assert all(t.connect_timeout == 3.0 for t in built)
        assert len(real._timeout_cache) <= 16
        assert real._urllib3_timeout(40.0, None) is built[-1]  # the latest ones are still shared
        with_deadline = real._urllib3_timeout(40.0, real.clock.monotonic() + 2.0)
        assert with_deadline is not built[-1] and with_deadline.read_timeout <= 2.0
    finally:
        real.close()


class _RefusingConnection:
    """A connection whose send fails as ``error`` does (the direct path's one step before reading)."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def request(self, *args: object, **kwargs: object) -> None:
        raise self.error


@pytest.mark.parametrize("error", [BrokenPipeError(32, "broken pipe"), OSError(errno.ECONNRESET, "reset"),
                                   OSError(errno.EPROTOTYPE, "wrong type")], ids=["EPIPE", "ECONNRESET", "EPROTOTYPE"])
def test_a_send_cut_by_a_server_that_already_answered_goes_on_to_read_its_answer(error: OSError) -> None:
    send_request(_RefusingConnection(error), "POST", "/api/v1/asample", b"{}", {})  # no error: the answer is read next


def test_any_other_send_failure_is_raised() -> None:
    with pytest.raises(ConnectionRefusedError):
        send_request(_RefusingConnection(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "POST", "/", None, {})
