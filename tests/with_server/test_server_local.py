"""LocalServer's lifecycle and the ``tinkex serve`` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Callable

import pytest
import requests

from tests.with_server.conftest import RawApi, sample_body
from tinkex.errors import ValidationError
from tinkex.server import LocalServer
from tinkex.server.cli import main
from tinkex.server.models import ECHO_MODEL


def _server_threads() -> list:
    return [t.name for t in threading.enumerate() if t.name.startswith(("tinkex-local-server", "tinkex-generate"))]


def test_restart_on_the_same_port_loses_state() -> None:
    before = set(_server_threads())
    server = LocalServer(models=[ECHO_MODEL], poll_hold_s=0.2, token_delay_ms=50)
    with server:
        port, api = server.port, RawApi(server)
        session_id = api.session()
        request_id = api.asample(sample_body(api.sampler(session_id=session_id), 0, sampling_params={"max_tokens": 99}))
        assert request_id.status_code == 200  # still generating when the server stops
    assert set(_server_threads()) == before  # no thread outlives stop()
    server.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=5)
    with server:
        assert server.port == port
        assert api.post("session_heartbeat", {"session_id": session_id}).status_code == 404
        assert api.get("healthz").status_code == 200
    assert set(_server_threads()) == before


def test_faults_set_while_stopped_apply_at_start() -> None:
    server = LocalServer(models=[ECHO_MODEL])
    server.set_faults("healthz.503=1")
    with server:
        assert RawApi(server).get("healthz").status_code == 503
    with pytest.raises(RuntimeError, match="not running"):
        server.stats()


def test_unknown_model_and_busy_port(fresh_server: Callable[..., LocalServer]) -> None:
    with pytest.raises(ValidationError, match="gpt-5"):
        LocalServer(models=["gpt-5"]).start()
    busy = fresh_server()
    with pytest.raises(OSError):
        LocalServer(models=[ECHO_MODEL], port=busy.port).start()
    assert RawApi(busy).get("healthz").status_code == 200


def test_repr_never_shows_keys() -> None:
    server = LocalServer(models=[ECHO_MODEL], api_keys=["tml-secret-key"])
    assert "tml-secret-key" not in repr(server) and "tml-secret-key" not in repr(server.settings)


def test_cli_refuses_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    assert "api_keys" in capsys.readouterr().err
    assert main(["--port", "0", "--faults", "asample.999=1"]) == 2
    assert "unknown kind" in capsys.readouterr().err


def test_cli_serves_until_interrupted() -> None:
    command = [sys.executable, "-m", "tinkex.server", "--port", "0", "--model", ECHO_MODEL, "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("tinkex server on http://127.0.0.1:"), banner
        url = banner.split()[3]
        response = requests.get(url + "/api/v1/healthz", headers={"X-API-Key": "tml-cli"}, timeout=10)
        assert response.json() == {"status": "ok"}
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err
