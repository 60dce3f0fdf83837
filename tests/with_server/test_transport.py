"""The HTTP transport against a scripted server on 127.0.0.1: headers, retries, errors, redirects."""

from __future__ import annotations

import json
import logging
import pickle
import threading
from typing import Iterator, List

import pytest

import tinkex
from tests.scripted_server import Answer, ScriptedServer
from tinkex import errors
from tinkex._clock import Clock
from tinkex._config import Config
from tinkex._http.transport import USER_AGENT, Transport

KEY = "tml-transport-secret-0001"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def make_transport(server: ScriptedServer, sleeps: List[float], **config: object) -> Transport:
    cfg = Config.from_env(api_key=KEY, base_url=server.base_url, environ={}, **config)  # type: ignore[arg-type]

    def fake_sleep(seconds: float, stop: object = None) -> bool:
        sleeps.append(seconds)
        return False

    return Transport(cfg, clock=Clock(random=lambda: 0.0, sleeper=fake_sleep))


def test_headers_and_compact_body(server: ScriptedServer) -> None:
    server.queue("/api/v1/create_session", Answer(body=b'{"session_id":"s1"}'))
    transport = make_transport(server, [])
    answer = transport.request("POST", "create_session", body={"tags": [], "x": None, "name": "é"})
    assert answer.json("t") == {"session_id": "s1"}
    call = server.calls("/api/v1/create_session")[0]
    assert call.body == '{"tags":[],"x":null,"name":"é"}'.encode()
    assert call.headers["X-API-Key"] == KEY
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("tinkex/")
    assert call.headers["X-Idempotency-Key"].startswith("tinkex-retry-")


def test_get_has_no_body_headers(server: ScriptedServer) -> None:
    server.queue("/api/v1/healthz", Answer(body=b'{"status":"ok"}'))
    make_transport(server, []).request("GET", "healthz")
    call = server.calls("/api/v1/healthz")[0]
    assert "Content-Type" not in call.headers and "X-Idempotency-Key" not in call.headers


def test_retries_keep_the_idempotency_key(server: ScriptedServer) -> None:
    server.queue("/api/v1/create_session", Answer(status=503), Answer(status=429, headers=(("retry-after", "2"),)),
                 Answer(status=408), Answer(body=b'{"session_id":"s"}'))
    sleeps: List[float] = []
    make_transport(server, sleeps).request("POST", "create_session", body={})
    calls = server.calls("/api/v1/create_session")
    assert len(calls) == 4
    assert len({c.headers["X-Idempotency-Key"] for c in calls}) == 1
    assert [c.headers["x-stainless-retry-count"] for c in calls] == ["0", "1", "2", "3"]
    assert sleeps == [0.5, 2.0, 2.0]


def test_max_retries_zero_means_one_call(server: ScriptedServer) -> None:
    server.always("/api/v1/asample", Answer(status=503, body=b'{"detail":"busy"}'))
    with pytest.raises(errors.InternalServerError) as info:
        make_transport(server, []).request("POST", "asample", body={}, max_retries=0)
    assert len(server.calls("/api/v1/asample")) == 1
    assert info.value.status_code == 503 and "busy" in str(info.value)


@pytest.mark.parametrize("status,cls", [(400, errors.BadRequestError), (401, errors.AuthenticationError),
                                        (402, errors.BillingError), (403, errors.PermissionDeniedError),
                                        (404, errors.NotFoundError), (409, errors.ConflictError),
                                        (410, errors.PromiseExpiredError), (418, errors.APIStatusError),
                                        (422, errors.UnprocessableEntityError), (429, errors.RateLimitError),
                                        (500, errors.InternalServerError), (502, errors.InternalServerError)])
def test_status_mapping(server: ScriptedServer, status: int, cls: type) -> None:
    server.always("/api/v1/x", Answer(status=status, body=b'{"detail":"nope","request_id":"r-1"}'))
    with pytest.raises(cls) as info:
        make_transport(server, []).request("POST", "x", body={}, max_retries=0)
    assert type(info.value) is cls and info.value.status_code == status and info.value.request_id == "r-1"
    assert f"Error code: {status}" in str(info.value)
    clone = pickle.loads(pickle.dumps(info.value))
    assert (type(clone), clone.status_code, clone.body) == (cls, status, info.value.body)


def test_body_excerpt_is_capped_and_scrubbed(server: ScriptedServer) -> None:
    body = json.dumps({"detail": "echo " + KEY + " " + "x" * 5000}).encode()
    server.always("/api/v1/x", Answer(status=400, body=body))
    with pytest.raises(errors.BadRequestError) as info:
        make_transport(server, []).request("POST", "x", body={})
    assert KEY not in str(info.value) and len(str(info.value)) < 700


def test_bare_400_is_a_connection_error(server: ScriptedServer) -> None:
    server.always("/api/v1/x", Answer(status=400, body=b"", headers=()))
    sleeps: List[float] = []
    with pytest.raises(errors.APIConnectionError, match="empty body"):
        make_transport(server, sleeps, max_retries=2).request("POST", "x", body={})
    assert len(server.calls("/api/v1/x")) == 3


def test_connection_refused_names_the_url() -> None:
    cfg = Config.from_env(api_key=KEY, base_url="http://127.0.0.1:9", environ={}, max_retries=0)
    with pytest.raises(errors.APIConnectionError) as info:
        Transport(cfg).request("GET", "healthz")
    assert "127.0.0.1:9" in str(info.value) and info.value.url == "http://127.0.0.1:9/api/v1/healthz"
    assert KEY not in str(info.value)


def test_read_timeout_is_api_timeout(server: ScriptedServer) -> None:
    server.always("/api/v1/slow", Answer(delay=1.0))
    with pytest.raises(errors.APITimeoutError) as info:
        make_transport(server, [], max_retries=0).request("POST", "slow", body={}, read_timeout=0.2)
    assert isinstance(info.value, TimeoutError)


def test_oversized_body_is_refused(server: ScriptedServer) -> None:
    server.always("/api/v1/big", Answer(body=b"x" * 200_000))
    with pytest.raises(errors.APIConnectionError, match="max_response_bytes"):
        make_transport(server, [], max_response_bytes=100_000).request("GET", "big")


def test_redirect_to_another_host_drops_the_key(server: ScriptedServer) -> None:
    with ScriptedServer() as other:
        other.always("/landing", Answer(body=b"{}"))
        # 127.0.0.1 and localhost are different hosts to requests' auth-stripping rule.
        target = other.base_url.replace("127.0.0.1", "localhost") + "/landing"
        server.always("/api/v1/hop", Answer(status=307, headers=(("Location", target),)))
        cfg = Config.from_env(api_key=KEY, base_url=server.base_url, environ={"CLOUDFLARE_ACCESS_CLIENT_SECRET": "cf"})
        Transport(cfg).request("POST", "hop", body={})
        landed = other.calls("/landing")[0]
        assert "X-API-Key" not in landed.headers and "CF-Access-Client-Secret" not in landed.headers


def test_redirect_on_same_host_keeps_the_key(server: ScriptedServer) -> None:
    server.always("/api/v1/hop", Answer(status=307, headers=(("Location", "/api/v1/land"),)))
    server.always("/api/v1/land", Answer(body=b"{}"))
    make_transport(server, []).request("POST", "hop", body={})
    assert server.calls("/api/v1/land")[0].headers["X-API-Key"] == KEY


def test_close_aborts_a_blocked_read(server: ScriptedServer) -> None:
    server.always("/api/v1/hold", Answer(delay=5.0))
    transport = make_transport(server, [], max_retries=0)
    failures: List[BaseException] = []

    def call() -> None:
        try:
            transport.request("POST", "hold", body={})
        except tinkex.TinkexError as exc:
            failures.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    threading.Event().wait(0.3)
    transport.close()
    worker.join(2.0)
    assert not worker.is_alive() and isinstance(failures[0], errors.APIConnectionError)


def test_key_never_logged(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server.queue("/api/v1/x", Answer(status=500), Answer(body=b"{}"))
    make_transport(server, []).request("POST", "x", body={"k": 1})
    assert caplog.records and KEY not in caplog.text
