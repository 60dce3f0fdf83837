"""Less-travelled paths of the local server over real HTTP: requests without a sampling session,
bodies the server must refuse or tolerate, polls whose request is forgotten or paused while
held, poller completions of forgotten results, a streamed token with no text, the lifecycle
calls of ``LocalServer`` and ``tinkex serve`` run in this process."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest
import requests

from tests.support.waiting import wait_until
from tinkex.server import LocalServer
from tinkex.server.cli import main
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL

from .conftest import FakeClock, RawApi, sample_body


def _poll(api: RawApi, sampler: str, cursor: int, retrieved: List[str] = (), **extra: Any) -> requests.Response:  # type: ignore[assignment]
    target = {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": 0}
    body = {"target": target, "prev_cursor": cursor, "retrieved_request_ids": list(retrieved), **extra}
    return api.post("retrieve_futures", body)


def _sse_events(text: str) -> List[Dict[str, Any]]:
    events = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in lines:
            events.append({"event": lines["event"], **json.loads(lines["data"])})
    return events


# ---------------------------------------------------------------- sessions and sampling


def test_a_negative_sampling_session_seq_id_is_refused(api: RawApi) -> None:
    body = {"session_id": api.session(), "sampling_session_seq_id": -1, "base_model": ECHO_MODEL,
            "type": "create_sampling_session"}  # fmt: skip
    response = api.post("create_sampling_session", body)
    assert response.status_code == 400 and "sampling_session_seq_id must be >= 0, got -1" in response.text


def test_asample_without_a_sampling_session_samples_the_named_model(api: RawApi) -> None:
    body = sample_body(None, None, base_model=ECHO_MODEL, sampling_params={"max_tokens": 3, "seed": 0})
    first = api.asample(body).json()
    second = api.asample(body).json()
    assert first["request_id"] != second["request_id"]  # no (sampler, seq_id) pair: never deduplicated
    result = api.result(first["request_id"], protobuf=False).json()
    assert result["sequences"][0]["tokens"] == list(b"Hel")


def test_config_routes_accept_a_request_without_a_body(api: RawApi) -> None:
    for route in ("client/config", "client/dynamic_config", "telemetry"):
        response = api.http.post(api.base + route, headers=api.headers(), timeout=30)
        assert response.status_code == 200, (route, response.text)
    assert api.post("create_session").status_code == 400  # but a body is required where it carries the request


# ---------------------------------------------------------------- polls


def test_retrieve_futures_refuses_a_body_that_is_not_an_object_or_a_negative_timeout(api: RawApi) -> None:
    response = api.post("retrieve_futures", [1, 2])
    assert response.status_code == 400 and "expected a JSON object" in response.text
    response = _poll(api, api.sampler(), 0, timeout=-1)
    assert response.status_code == 400 and "timeout must be a number >= 0, got -1" in response.text


def test_retrieve_futures_ignores_acknowledgements_of_unknown_or_foreign_requests(
    local_server: LocalServer, api: RawApi
) -> None:
    other = RawApi(local_server, key="tml-another-key")
    foreign_sampler = other.sampler()
    foreign = other.asample(sample_body(foreign_sampler, 0)).json()["request_id"]
    other.result(foreign)
    sampler = api.sampler()
    response = _poll(api, sampler, 0, ["req-never-issued", foreign], timeout=0)
    assert response.status_code == 200 and response.json() == {"completions": [], "cursor": 0}
    assert [r["delivered"] for r in local_server.records(foreign_sampler)] == [True]  # by its owner's retrieve
    unretrieved = other.asample(sample_body(foreign_sampler, 1)).json()["request_id"]
    wait_until(lambda: any(r["state"] == "done" for r in local_server.records(foreign_sampler)
                           if r["request_id"] == unretrieved))  # fmt: skip
    assert _poll(api, sampler, 0, [unretrieved], timeout=0).status_code == 200
    assert {r["request_id"]: r["delivered"] for r in local_server.records(foreign_sampler)}[unretrieved] is False
    other.close()


def test_a_completion_forgotten_before_the_poll_reads_it_has_no_size(
    fresh_server: Callable[..., LocalServer],
) -> None:
    clock = FakeClock()
    server = fresh_server(clock=clock, promise_expiry_s=5)
    api = RawApi(server)
    sampler = api.sampler()
    assert _poll(api, sampler, 0, timeout=0).json() == {"completions": [], "cursor": 0}  # the poller's log exists
    request_id = api.asample(sample_body(sampler, 0)).json()["request_id"]
    wait_until(lambda: server.records(sampler)[0]["state"] == "done")
    clock.advance(6)
    server.sweep()  # nobody retrieved it in time: forgotten
    assert server.records(sampler) == []
    assert _poll(api, sampler, 0, timeout=0).json() == {
        "completions": [{"state": "finished", "request_id": request_id}], "cursor": 1,
    }
    assert api.retrieve(request_id).status_code == 410


def test_a_pause_still_in_force_after_a_held_poll_is_reported(fresh_server: Callable[..., LocalServer]) -> None:
    # the pause clock stands still, so the 0.2 s window has not ended when the 0.5 s hold does
    server = fresh_server(clock=FakeClock(), token_delay_ms=1000, poll_hold_s=0.5,
                          faults="paused_capacity=0.2s,paused_capacity.reason=maintenance")  # fmt: skip
    api = RawApi(server)
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    answer = api.retrieve(request_id, protobuf=False).json()
    assert answer == {"type": "try_again", "request_id": request_id, "queue_state": "paused_capacity",
                      "queue_state_reason": "maintenance"}  # fmt: skip


def test_a_poll_held_while_its_session_is_finished_gets_410(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(token_delay_ms=1000, poll_hold_s=5)
    api = RawApi(server)
    session = api.session()
    request_id = api.asample(sample_body(api.sampler(session_id=session), 0)).json()["request_id"]
    answers: List[requests.Response] = []
    poller = threading.Thread(target=lambda: answers.append(RawApi(server).retrieve(request_id)))
    poller.start()
    wait_until(lambda: server.stats()["requests"].get("retrieve_future") == 1)
    assert api.post(f"sessions/{session}/finish", {}).status_code == 200
    poller.join(10)
    assert [answer.status_code for answer in answers] == [410]
    assert "submit it again" in answers[0].text


def test_an_injected_408_on_a_body_that_is_not_json_names_no_request(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="retrieve_future.408=1")
    api = RawApi(server)
    response = api.http.post(api.base + "retrieve_future", data=b"{not json", headers=api.headers(), timeout=30)
    assert response.status_code == 408
    assert response.json() == {"type": "try_again", "request_id": "", "queue_state": "active",
                               "detail": "injected fault: HTTP 408"}  # fmt: skip


# ---------------------------------------------------------------- streams


def test_a_streamed_end_of_sequence_token_carries_no_text(
    fresh_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"ab")  # after "ab" the model has only ever seen the end of a document
    server = fresh_server(models=(DEFAULT_MODEL,), corpus_path=str(corpus), cache_dir=str(tmp_path / "cache"))
    api = RawApi(server)
    body = sample_body(api.sampler(model=DEFAULT_MODEL), 0, tokens=list(b"ab"),
                       sampling_params={"temperature": 0.0, "max_tokens": 4})  # fmt: skip
    response = api.post("stream_sample", body)
    assert response.status_code == 200
    events = _sse_events(response.text)
    assert [event["event"] for event in events] == ["token", "done"]
    assert events[0]["token_id"] == 257 and events[0].get("token") is None  # EOS is no byte of text
    assert events[1]["finish_reason"] == "stop"


# ---------------------------------------------------------------- lifecycle


def test_start_while_running_is_a_no_op() -> None:
    server = LocalServer(models=(ECHO_MODEL,))
    assert not server.is_running
    with server:
        port = server.port
        assert server.is_running and server.start() is server and server.port == port
        assert RawApi(server).get("healthz").status_code == 200
    assert not server.is_running


def test_tinkex_serve_with_configured_keys_prints_no_key_hint(capsys: pytest.CaptureFixture) -> None:
    original = signal.getsignal(signal.SIGTERM)

    def terminate_once_handled() -> None:
        wait_until(lambda: signal.getsignal(signal.SIGTERM) is not original)
        os.kill(os.getpid(), signal.SIGTERM)  # read once the server is up (the handler only writes a byte)

    sender = threading.Thread(target=terminate_once_handled)
    sender.start()
    try:
        status = main(["--port", "0", "--model", ECHO_MODEL, "--api-key", "tml-configured", "--log-level", "WARNING"])
        sender.join()
        # stopping: a default SIGTERM is ignored rather than killing the orderly exit
        assert signal.getsignal(signal.SIGTERM) in (original, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGTERM, original)
    out = capsys.readouterr().out
    assert status == 0
    assert out.startswith("tinkex server on http://127.0.0.1:") and "tinkex server stopped" in out
    assert "accepting any API key" not in out and "tml-configured" not in out


def _own_non_loopback_address() -> str:
    """This machine's address on its default route (a UDP connect sends nothing), or skip."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("198.51.100.1", 9))  # TEST-NET-2: routed, never contacted
        address = probe.getsockname()[0]
    except OSError:
        address = ""
    finally:
        probe.close()
    if not address or ipaddress.ip_address(address).is_loopback:
        pytest.skip("no non-loopback IPv4 address on this machine")
    return str(address)


def test_admin_stats_refuses_a_client_that_is_not_on_loopback(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(host=_own_non_loopback_address(), api_keys=["tml-remote-key"])
    response = requests.get(server.base_url + "/api/v1/admin/stats", headers={"X-API-Key": server.admin_key},
                            timeout=10)  # fmt: skip
    assert response.status_code == 403 and "loopback clients only" in response.json()["detail"]
    assert RawApi(server).get("healthz").json() == {"status": "ok"}  # the rest of the API answers it


def test_tinkex_serve_interrupted_while_loading_its_model_exits_130(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.fifo"
    os.mkfifo(corpus)  # opening it for reading blocks until a writer comes: loading hangs right there
    main_thread = threading.main_thread()

    def interrupt_while_loading() -> None:
        def loading() -> bool:
            frame = sys._current_frames().get(main_thread.ident or 0)
            while frame is not None:
                if frame.f_code.co_name == "read_corpus":
                    return True
                frame = frame.f_back
            return False

        wait_until(loading)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=interrupt_while_loading)
    sender.start()
    status = main(["--port", "0", "--model", DEFAULT_MODEL, "--corpus", str(corpus), "--cache-dir", str(tmp_path)])
    sender.join()
    assert status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main put nothing of its own in place
