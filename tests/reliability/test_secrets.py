"""The API key never leaks, and the local server keeps keys apart.

Every captured output is grepped for the key: log records at DEBUG of every logger (urllib3
included), ``repr``/``str`` of the public objects, exception messages, telemetry payloads and
pickles. Plus: no credential header after a redirect to another host, TLS verification on by
default (off warns once), and the local server's access rules seen through a real client.
"""

from __future__ import annotations

import logging
import pickle
import subprocess
import warnings
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

import tinkex
import tinkex._config
from tests.reliability.hostile_server import ASAMPLE_PATH, HostileServer, json_reply, redirect, reply
from tinkex import errors, types
from tinkex.server import LocalServer

KEY = "tml-secret-KEY-do-not-leak-8f3a"
OTHER_KEY = "tml-someone-else-2b7c"
ECHO = "tinkex/echo"
PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)


def assert_no_key(*texts: object) -> None:
    for text in texts:
        assert KEY not in str(text), f"the API key leaked into: {str(text)[:300]}"
        assert KEY.encode() not in (text if isinstance(text, bytes) else str(text).encode())


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # root: every logger, tinkex and urllib3 included
    for name in ("urllib3", "tinkex", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def test_a_faulty_run_logs_no_key_at_any_level(debug_logs: pytest.LogCaptureFixture) -> None:
    faults = "seed=3,500=0.1,429=0.05,drop_before=0.05,retrieve_future.410=0.05,retrieve_future.408=0.05"
    with LocalServer(models=[ECHO], poll_hold_s=0.5, faults=faults) as server:
        with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url) as service:
            client = service.create_sampling_client(base_model=ECHO)
            results = [client.sample(PROMPT, 1, PARAMS) for _ in range(40)]
            for future in results:
                future.result(60)
            bad = client.sample(types.ModelInput.from_ints([999]), 1, PARAMS)  # outside the vocabulary
            assert isinstance(bad.exception(60), errors.BadRequestError)
            assert_no_key(repr(service), str(service), repr(client), str(client), repr(service.config),
                          str(service.config), repr(client.get_telemetry().snapshot()), bad.exception())
        pickled = pickle.dumps(client.get_telemetry().snapshot())
    records = debug_logs.records
    assert any(r.name.startswith("urllib3") for r in records) and any(r.levelno == logging.DEBUG for r in records)
    assert_no_key(debug_logs.text, pickled, *(r.getMessage() for r in records), *(repr(r.args) for r in records))


def test_tinker_log_debug_prints_no_key(tmp_path: Path) -> None:
    with LocalServer(models=[ECHO], poll_hold_s=0.5) as server:
        script = (
            "import tinkex; from tinkex import types\n"
            f"with tinkex.ServiceClient(api_key={KEY!r}, base_url={server.base_url!r}) as s:\n"
            "    c = s.create_sampling_client(base_model='tinkex/echo')\n"
            "    c.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=2)).result(30)\n"
        )
        done = subprocess.run([tinkex_python(), "-c", script], capture_output=True, text=True, timeout=60,
                              env={"TINKER_LOG": "debug", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "asample" in done.stderr  # debug logging really was on
    assert_no_key(done.stdout, done.stderr)


def tinkex_python() -> str:
    import sys

    return sys.executable


@pytest.fixture
def echoing() -> Iterator[HostileServer]:
    """A server that quotes the key it received back in every kind of answer."""
    with HostileServer() as server:
        yield server


ECHO_CASES = {
    "4xx body": (ASAMPLE_PATH, lambda key: json_reply({"detail": f"key {key} is not allowed"}, 403),
                 errors.PermissionDeniedError),
    "5xx body": (ASAMPLE_PATH, lambda key: reply(502, f"<h1>bad gateway for {key}</h1>".encode(), "text/html"),
                 errors.APITimeoutError),
    "failed future": ("/api/v1/retrieve_future",
                      lambda key: json_reply({"error": f"quota exceeded for {key}", "category": "user"}),
                      errors.RequestFailedError),
    "undecodable promise": (ASAMPLE_PATH, lambda key: reply(200, f'{{"request_id": "{key}'.encode()),
                            errors.DecodeError),
    "undecodable result": ("/api/v1/retrieve_future",
                           lambda key: reply(200, f'{{"sequences": "{key}"}}'.encode()), errors.DecodeError),
}


@pytest.mark.parametrize("case", sorted(ECHO_CASES))
def test_a_server_quoting_the_key_back_never_puts_it_in_an_error(echoing: HostileServer, case: str) -> None:
    path, behaviour, expected = ECHO_CASES[case]
    echoing.on(path, behaviour(KEY))
    with tinkex.ServiceClient(api_key=KEY, base_url=echoing.base_url) as service:
        client = service.create_sampling_client(base_model="m")
        error = client.sample(PROMPT, 1, PARAMS, timeout=2.5).exception(15)
    assert isinstance(error, expected), repr(error)
    assert_no_key(str(error), repr(error), error.args, getattr(error, "body", ""), pickle.dumps(error))
    telemetry = [call.body for call in echoing.calls("/api/v1/telemetry")]
    assert telemetry, "the failure should have been reported"
    assert_no_key(*telemetry)


def test_no_request_body_or_other_header_carries_the_key(echoing: HostileServer) -> None:
    echoing.on(ASAMPLE_PATH, json_reply({"detail": f"nope {KEY}"}, 422))
    with tinkex.ServiceClient(api_key=KEY, base_url=echoing.base_url) as service:
        client = service.create_sampling_client(base_model="m")
        assert client.sample(PROMPT, 1, PARAMS).exception(15) is not None
    assert echoing.calls("/api/v1/telemetry")
    for call in echoing.requests:
        assert call.headers.get("X-API-Key") == KEY
        assert_no_key(call.body, {k: v for k, v in call.headers.items() if k != "X-API-Key"}, call.path)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_no_credential_header_after_a_redirect_to_another_host(echoing: HostileServer, status: int) -> None:
    with HostileServer(host="127.0.0.2") as elsewhere:
        echoing.on("/api/v1/get_server_capabilities", redirect(elsewhere.base_url + "/caps", status))
        elsewhere.on("/caps", json_reply({"supported_models": []}))
        service = tinkex.ServiceClient(api_key=KEY, base_url=echoing.base_url,
                                       default_headers={"CF-Access-Client-Secret": "cf-secret"})
        service.get_server_capabilities()
        service.close()
        landed = elsewhere.calls("/caps")
        assert len(landed) == 1
        assert "X-API-Key" not in landed[0].headers and "CF-Access-Client-Secret" not in landed[0].headers
        assert_no_key(landed[0].headers, landed[0].body)


def test_same_host_redirects_keep_the_key(echoing: HostileServer) -> None:
    echoing.on("/api/v1/get_server_capabilities", redirect(echoing.base_url + "/caps", 307))
    echoing.on("/caps", json_reply({"supported_models": []}))
    with tinkex.ServiceClient(api_key=KEY, base_url=echoing.base_url) as service:
        service.get_server_capabilities()
    assert echoing.calls("/caps")[0].headers.get("X-API-Key") == KEY


def test_pickles_carry_the_key_only_when_allowed() -> None:
    with LocalServer(models=[ECHO], poll_hold_s=0.5) as server:
        for allowed in (False, True):
            with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, pickle_api_key=allowed) as service:
                client = service.create_sampling_client(base_model=ECHO)
                data = pickle.dumps(client)
                assert (KEY.encode() in data) is allowed
                with pytest.raises(TypeError):
                    pickle.dumps(service.config)


def test_tls_verification_is_on_by_default_and_turning_it_off_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    service = tinkex.ServiceClient(api_key=KEY, base_url="https://127.0.0.1:9")
    assert service.config.verify is True
    service.close()
    monkeypatch.setattr(tinkex._config, "_verify_warned", False)
    with pytest.warns(UserWarning, match="verification is turned off"):
        tinkex.ServiceClient(api_key=KEY, base_url="https://127.0.0.1:9", verify=False).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tinkex.ServiceClient(api_key=KEY, base_url="https://127.0.0.1:9", verify=False).close()


def test_a_self_signed_server_is_refused_with_verification_on(tmp_path: Path) -> None:
    certificate, private_key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(private_key),
                    "-out", str(certificate)],
                   check=True, capture_output=True, timeout=60)
    with HostileServer(tls=(str(certificate), str(private_key))) as server:
        assert server.base_url.startswith("https://")
        service = tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, max_retries=0)
        with pytest.raises(errors.APIConnectionError) as caught:
            service.create_sampling_client(base_model="m")
        service.close()
        assert_no_key(str(caught.value))
        assert server.calls("/api/v1/client/config") == []  # nothing was sent over the unverified channel
        trusted = tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, verify=str(certificate),
                                       max_retries=0)
        assert trusted.create_sampling_client(base_model="m").sampling_session_id
        trusted.close()


# -- the local server's access rules, through the real client --------------------------------


@pytest.fixture
def keyed_server() -> Iterator[LocalServer]:
    with LocalServer(models=[ECHO], poll_hold_s=0.5, api_keys=[KEY, OTHER_KEY], token_delay_ms=200) as server:
        yield server


def raw_call(server: LocalServer, key: str, method: str, path: str, body: object = None) -> requests.Response:
    headers = {"X-API-Key": key} if key else {}
    return requests.request(method, f"{server.base_url}/api/v1/{path}", json=body, headers=headers, timeout=10)


def test_the_local_server_binds_loopback_and_wants_a_key_everywhere(keyed_server: LocalServer) -> None:
    assert LocalServer().settings.host == "127.0.0.1"
    with pytest.raises(errors.ValidationError):
        LocalServer(host="0.0.0.0")
    from tinkex.server._routes import ROUTE_PATHS

    for method, path in ROUTE_PATHS.values():
        path = path.format(sampler_id="x", session_id="y")
        for key in ("", "tml-not-configured", KEY.upper()):
            assert raw_call(keyed_server, key, method, path, {}).status_code == 401, (path, key)
    assert raw_call(keyed_server, "", "GET", "admin/stats").status_code == 401
    with pytest.raises(errors.AuthenticationError) as caught:
        tinkex.ServiceClient(api_key="tml-not-configured", base_url=keyed_server.base_url).create_sampling_client(
            base_model=ECHO)
    assert "tml-not-configured" not in str(caught.value)


def test_one_key_cannot_touch_what_another_key_created(keyed_server: LocalServer) -> None:
    with tinkex.ServiceClient(api_key=KEY, base_url=keyed_server.base_url) as owner:
        client = owner.create_sampling_client(base_model=ECHO)
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=8, seed=1))
        record = wait_for_record(keyed_server, client.sampling_session_id)
        request_id, session_id = record["request_id"], owner.session_id
        assert len(request_id) >= 20 and len(session_id) >= 20  # 128 random bits each
        attempts: List[requests.Response] = [
            raw_call(keyed_server, OTHER_KEY, "POST", "retrieve_future", {"request_id": request_id}),
            raw_call(keyed_server, OTHER_KEY, "POST", "cancel_future", {"request_id": request_id}),
            raw_call(keyed_server, OTHER_KEY, "POST", "session_heartbeat",
                     {"session_id": session_id, "type": "session_heartbeat"}),
            raw_call(keyed_server, OTHER_KEY, "GET", f"samplers/{client.sampling_session_id}"),
            raw_call(keyed_server, OTHER_KEY, "POST", "create_sampling_session",
                     {"session_id": session_id, "sampling_session_seq_id": 7, "base_model": ECHO,
                      "type": "create_sampling_session"}),
            raw_call(keyed_server, OTHER_KEY, "POST", f"sessions/{session_id}/finish", {}),
            raw_call(keyed_server, OTHER_KEY, "POST", "asample", {
                "sampling_session_id": client.sampling_session_id, "seq_id": 99, "num_samples": 1,
                "prompt": PROMPT.to_json(), "sampling_params": PARAMS.to_json(), "type": "sample"}),
        ]
        assert [a.status_code for a in attempts] == [404, 404, 404, 404, 404, 404, 400]
        for answer in attempts:
            assert KEY not in answer.text and OTHER_KEY not in answer.text
        assert future.result(30).sequences  # the owner's work went on untouched
    assert keyed_server.stats()["cancels"] == 0


def wait_for_record(server: LocalServer, sampling_session_id: str) -> dict:
    import time

    for _ in range(200):
        records = server.records(sampling_session_id)
        if records:
            return records[0]
        time.sleep(0.01)
    raise AssertionError("the sample never reached the server")


def test_oversized_request_bodies_are_refused(keyed_server: LocalServer) -> None:
    limit = keyed_server.settings.max_body_bytes
    answer = requests.post(f"{keyed_server.base_url}/api/v1/asample", data=b"{" + b" " * limit + b"}",
                           headers={"X-API-Key": KEY, "Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 413
    with tinkex.ServiceClient(api_key=KEY, base_url=keyed_server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO)
        huge = types.ModelInput.from_ints([1] * (limit // 2))
        error = client.sample(huge, 1, PARAMS).exception(60)
        assert isinstance(error, errors.APIStatusError) and error.status_code == 413, repr(error)
        assert len(str(error)) < 1200
