"""The local server under hostile clients (issue 16 items 14-16): it keeps answering well-behaved
clients while others send half a header, trickle bodies, ask for huge generations or open
sessions by the thousand, and ``/admin/stats`` shows a key only its own work.

Everything here talks raw HTTP (sockets or ``requests``) to a real server on 127.0.0.1; the
heavy-generation checks run the server in a child process so that its event loop, not the
test's, is what is measured.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

from tests.reliability.serve_local import ADMIN_KEY, ServerProcess
from tinkex.server import LocalServer

API = "/api/v1/"
HALF_HEAD = b"POST /api/v1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-"
HEALTHY_WITHIN_S = 0.5


def _post(base_url: str, route: str, key: str, body: Any, timeout: float = 30) -> requests.Response:
    return requests.post(base_url + API + route, json=body, headers={"X-API-Key": key}, timeout=timeout)


def _session(base_url: str, key: str) -> requests.Response:
    body = {"tags": [], "user_metadata": {}, "sdk_version": "test", "type": "create_session"}
    return _post(base_url, "create_session", key, body)


def _sampler(base_url: str, key: str) -> str:
    session_id = _session(base_url, key).json()["session_id"]
    body = {"session_id": session_id, "sampling_session_seq_id": 0, "base_model": "tinkex/echo",
            "type": "create_sampling_session"}  # fmt: skip
    return _post(base_url, "create_sampling_session", key, body).json()["sampling_session_id"]


def _sample_body(sampler: str, seq_id: int, num_samples: int, max_tokens: int) -> Dict[str, Any]:
    return {
        "sampling_session_id": sampler, "seq_id": seq_id, "num_samples": num_samples,
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": [104, 105]}]},
        "sampling_params": {"max_tokens": max_tokens, "seed": 1}, "type": "sample",
    }  # fmt: skip


def _healthz_seconds(base_url: str, key: str = "tml-health") -> float:
    started = time.monotonic()
    answer = requests.get(base_url + API + "healthz", headers={"X-API-Key": key}, timeout=30)
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def _worst_healthz_while(base_url: str, work: threading.Thread) -> float:
    worst = 0.0
    work.start()
    while work.is_alive():
        worst = max(worst, _healthz_seconds(base_url))
        time.sleep(0.02)
    work.join()
    return worst


def _closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture
def guarded() -> Iterator[LocalServer]:
    server = LocalServer(
        models=["tinkex/echo"], head_timeout_s=1.0, idle_timeout_s=1.5, body_timeout_s=1.0, max_connections_per_peer=40
    )
    with server:
        yield server


# 14: half-sent headers, idle connections, trickled bodies ----------------------------------


def test_half_sent_headers_are_cut_and_excess_connections_refused(guarded: LocalServer) -> None:
    port = guarded.port
    slow: List[socket.socket] = []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(HALF_HEAD)
            slow.append(sock)
        time.sleep(0.2)  # let the server accept them all
        refused = socket.create_connection(("127.0.0.1", port))
        refused.settimeout(5)
        assert refused.recv(4096).startswith(b"HTTP/1.1 429 ")  # at once, not after a timeout
        refused.close()
        started = time.monotonic()
        assert all(_closed_by_peer(sock, within_s=4.0) for sock in slow)
        assert time.monotonic() - started < 4.0  # head_timeout_s=1 plus slack
    finally:
        for sock in slow:
            sock.close()
    assert _healthz_seconds(guarded.base_url) < HEALTHY_WITHIN_S
    stats = guarded.stats()
    assert stats["events"]["connections_head_timeout"] == 40
    assert stats["events"]["connections_refused"] >= 1


def test_idle_connections_are_closed(guarded: LocalServer) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    try:
        assert _closed_by_peer(sock, within_s=4.0)
    finally:
        sock.close()


def test_a_trickled_body_gets_408(guarded: LocalServer) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    try:
        sock.sendall(
            b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\nX-API-Key: tml-slow\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"tags\": "
        )
        sock.settimeout(5)
        started = time.monotonic()
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received within 1 s" in answer
        assert time.monotonic() - started < 3.0
    finally:
        sock.close()


def test_a_well_behaved_keep_alive_client_is_not_cut(guarded: LocalServer) -> None:
    with requests.Session() as http:
        for _ in range(3):  # each request within idle_timeout_s of the last answer
            answer = http.get(guarded.base_url + API + "healthz", headers={"X-API-Key": "tml-ok"}, timeout=10)
            assert answer.status_code == 200
            time.sleep(0.5)


# 15: heavy requests, the per-key token budget, sessions per key ----------------------------


def test_a_request_over_the_token_cap_is_refused_and_the_loop_stays_responsive() -> None:
    with ServerProcess(models=["tinkex/echo"]) as server:
        samplers = [_sampler(server.base_url, f"tml-heavy-{index}") for index in range(2)]
        answers: List[requests.Response] = []

        def heavy() -> None:  # the probe's shape: 128 samples of 8,192 tokens
            for seq_id in range(10):
                for index, sampler in enumerate(samplers):
                    body = _sample_body(sampler, seq_id, 128, 8192)
                    answers.append(_post(server.base_url, "asample", f"tml-heavy-{index}", body))

        worst = _worst_healthz_while(server.base_url, threading.Thread(target=heavy))
    print(f"worst health check while 20 oversized requests were refused: {worst * 1000:.0f} ms")
    assert worst < HEALTHY_WITHIN_S
    assert {answer.status_code for answer in answers} == {400}
    detail = answers[0].json()["detail"]
    assert "num_samples=128" in detail and "max_tokens=8192" in detail and "131072" in detail


def test_heavy_generations_run_off_the_event_loop() -> None:
    options = {"models": ["tinkex/echo"], "max_request_tokens": 2_000_000, "max_pending_tokens_per_key": 10**9}
    with ServerProcess(**options) as server:
        sampler = _sampler(server.base_url, "tml-heavy")
        promises: List[requests.Response] = []

        def heavy() -> None:
            for seq_id in range(6):
                body = _sample_body(sampler, seq_id, 128, 8192)
                promises.append(_post(server.base_url, "asample", "tml-heavy", body))

        worst = _worst_healthz_while(server.base_url, threading.Thread(target=heavy))
        print(f"worst health check while generating 6 x 128 x 8192 tokens: {worst * 1000:.0f} ms")
        assert [answer.status_code for answer in promises] == [200] * 6
        assert worst < HEALTHY_WITHIN_S


def _pending_body(sampler: str, seq_id: int) -> Dict[str, Any]:
    return _sample_body(sampler, seq_id, 1, 64)


def test_a_key_over_its_pending_token_budget_gets_429_with_a_queue_state() -> None:
    with LocalServer(models=["tinkex/echo"], token_delay_ms=200, max_pending_tokens_per_key=100) as server:
        base = server.base_url
        greedy, other = _sampler(base, "tml-greedy"), _sampler(base, "tml-other")
        first = _post(base, "asample", "tml-greedy", _pending_body(greedy, 0))
        assert first.status_code == 200
        over = _post(base, "asample", "tml-greedy", _pending_body(greedy, 1))
        assert over.status_code == 429
        assert over.json()["queue_state"] == "paused_rate_limit"
        assert "limit of 100" in over.json()["detail"]
        assert _post(base, "asample", "tml-other", _pending_body(other, 0)).status_code == 200  # another key
        cancelled = _post(base, "cancel_future", "tml-greedy", {"request_id": first.json()["request_id"]})
        assert cancelled.status_code == 200
        assert _post(base, "asample", "tml-greedy", _pending_body(greedy, 1)).status_code == 200  # budget back


def test_sessions_per_key_are_capped_with_429() -> None:
    with LocalServer(models=["tinkex/echo"], max_sessions_per_key=3) as server:
        base = server.base_url
        ids = [_session(base, "tml-many").json()["session_id"] for _ in range(3)]
        refused = _session(base, "tml-many")
        assert refused.status_code == 429
        assert "3 active sessions" in refused.json()["detail"]
        assert _session(base, "tml-someone-else").status_code == 200
        assert _post(base, f"sessions/{ids[0]}/finish", "tml-many", {}).status_code == 200
        assert _session(base, "tml-many").status_code == 200


# 16: /admin/stats shows a key its own work only ---------------------------------------------


def _admin_stats(base_url: str, key: Optional[str]) -> Dict[str, Any]:
    answer = requests.get(base_url + API + "admin/stats", headers={"X-API-Key": key or ""}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_admin_stats_shows_a_key_only_its_own_sessions_and_requests() -> None:
    with LocalServer(models=["tinkex/echo"], admin_key=ADMIN_KEY) as server:
        base = server.base_url
        sampler_a = _sampler(base, "tml-alice")
        request_a = _post(base, "asample", "tml-alice", _pending_body(sampler_a, 0)).json()["request_id"]
        sampler_b = _sampler(base, "tml-bob")
        request_b = _post(base, "asample", "tml-bob", _pending_body(sampler_b, 0)).json()["request_id"]

        bob = _admin_stats(base, "tml-bob")
        text = str(bob)
        assert request_b in text and sampler_b in text
        assert request_a not in text and sampler_a not in text
        assert bob["sessions_known"] == 1 and bob["records"] == 1
        assert "faults_by_route" not in bob and "requests" not in bob  # no server-wide counters

        eve = _admin_stats(base, "tml-eve")
        assert eve["generations"] == [] and eve["sessions_known"] == 0

        admin = _admin_stats(base, ADMIN_KEY)
        assert request_a in str(admin) and request_b in str(admin)
        assert admin["sessions_known"] == 2 and "faults_by_route" in admin


def test_tinkex_serve_caps_connections_per_peer() -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tinkex", "serve", "--port", "0", "--model", "tinkex/echo", "--log-level", "ERROR",
         "--max-connections-per-peer", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    held: List[socket.socket] = []
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline().split(" on ", 1)[1].split(" ", 1)[0].rsplit(":", 1)[1])
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        time.sleep(0.2)
        third = socket.create_connection(("127.0.0.1", port))
        third.settimeout(5)
        assert third.recv(4096).startswith(b"HTTP/1.1 429 ")
        third.close()
    finally:
        for sock in held:
            sock.close()
        os.kill(child.pid, signal.SIGTERM)
        child.communicate(timeout=15)
    assert child.returncode == 0
