"""The official SDK in poller mode against ``tinkex serve --client-config sample_use_retrieve_futures=true``.

The server runs as the CLI would be run by a user (a subprocess); the official SDK, told by
``client/config`` to use ``retrieve_futures`` (protocol 4.10) and by ``dynamic_config`` that
cancellation is on, must get exactly what tinkex (default mode) gets from the same server.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import requests

from .test_official_sdk import _calls, _run_official, _run_tinkex, _without_ids

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

ADMIN_KEY = "tml-compat-admin"
FLAGS = ("sample_use_retrieve_futures=true", "sample_max_concurrent_requests=64", "sample_cancel_enabled=true")


@pytest.fixture(scope="module")
def poller_server() -> Iterator[str]:
    argv = [sys.executable, "-m", "tinkex", "serve", "--port", "0", "--model", "tinkex/ngram-small",
            "--admin-key", ADMIN_KEY, "--log-level", "WARNING"]  # fmt: skip
    for flag in FLAGS:
        argv += ["--client-config", flag]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        banner = child.stdout.readline()
        assert banner.startswith("tinkex server on "), banner + (child.stderr.read() if child.stderr else "")
        yield banner.split(" on ", 1)[1].split(" ", 1)[0]
    finally:
        os.kill(child.pid, signal.SIGTERM)
        child.communicate(timeout=30)


def _statuses(base_url: str) -> Dict[str, int]:
    answer = requests.get(base_url + "/api/v1/admin/stats", headers={"X-API-Key": ADMIN_KEY}, timeout=10)
    return answer.json()["statuses"]


def test_official_sdk_in_poller_mode_gets_what_tinkex_gets(official_python: Path, poller_server: str) -> None:
    calls = _calls()
    official = _run_official(official_python, poller_server, calls)
    statuses = _statuses(poller_server)
    assert official["warnings"] == []
    assert statuses.get("retrieve_futures 200", 0) >= 1, statuses  # the SDK really polled in poller mode
    assert {key: n for key, n in statuses.items() if not key.endswith(" 200")} == {}
    ours: Dict[str, Any] = _run_tinkex(poller_server, calls)
    for call in calls:
        name = call["name"]
        if call["method"] == "sample":
            assert _without_ids(official["results"][name]) == _without_ids(ours[name]), name
        else:
            assert official["results"][name] == ours[name], name
