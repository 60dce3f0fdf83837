"""Announced client-config flags (``tinkex serve --client-config``, ``LocalServer(client_config=)``)
and ``retrieve_futures`` (protocol 4.10) on the wire: cursor, acknowledgement, failed
completions and ``allow_metadata_only``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import pytest
import requests

from tinkex.errors import ValidationError
from tinkex.server import LocalServer
from tinkex.types import ClientConfig, DynamicConfig

from .conftest import PROTOBUF, RawApi

FLAGS = {"sample_use_retrieve_futures": True, "sample_max_concurrent_requests": 64, "sample_cancel_enabled": True}


def _configs(api: RawApi) -> Any:
    client = api.ok("client/config", {"sdk_version": "0.38.0"})
    dynamic = api.ok("client/dynamic_config", {"sdk_version": "0.38.0"})
    return client, dynamic


def test_local_server_announces_client_config_flags(fresh_server: Callable[..., LocalServer]) -> None:
    client, dynamic = _configs(RawApi(fresh_server(client_config=FLAGS)))
    parsed = ClientConfig.from_json(client)
    assert parsed.sample_use_retrieve_futures is True and parsed.sample_max_concurrent_requests == 64
    assert "sample_cancel_enabled" not in client  # protocol 4.2: a dynamic_config flag
    assert DynamicConfig.from_json(dynamic).sample_cancel_enabled is True


@pytest.mark.parametrize("flags", [{"sample_use_retrieve_futures": "yes"}, {"sample_cancel_enabled": 1},
                                   {"sample_max_concurrent_requests": "many"}])  # fmt: skip
def test_a_flag_of_the_wrong_type_names_the_flag(flags: Dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        LocalServer(client_config=flags)
    (name,) = flags
    assert caught.value.field == name and name in str(caught.value)


def _serve(*extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinkex", "serve", "--port", "0", "--model", "tinkex/echo", "--log-level", "WARNING",
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_tinkex_serve_client_config_flags() -> None:
    child = _serve("--client-config", "sample_use_retrieve_futures=true",
                   "--client-config", "sample_max_concurrent_requests=64",
                   "--client-config", "sample_cancel_enabled=true",
                   "--client-config", 'credential_default_source="api_key"')  # fmt: skip
    try:
        assert child.stdout is not None
        banner = child.stdout.readline()
        base_url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        headers = {"X-API-Key": "tml-cli"}
        client = requests.post(base_url + "/api/v1/client/config", json={}, headers=headers, timeout=10).json()
        dynamic = requests.post(base_url + "/api/v1/client/dynamic_config", json={}, headers=headers, timeout=10).json()
        assert client["sample_use_retrieve_futures"] is True and client["sample_max_concurrent_requests"] == 64
        assert client["credential_default_source"] == "api_key"
        assert dynamic["sample_cancel_enabled"] is True
    finally:
        os.kill(child.pid, signal.SIGTERM)
        child.communicate(timeout=15)
    assert child.returncode == 0


@pytest.mark.parametrize("flag, message", [("sample_use_retrieve_futures=maybe", "sample_use_retrieve_futures"),
                                           ("no-equals-sign", "KEY=VALUE")])  # fmt: skip
def test_tinkex_serve_rejects_a_bad_client_config_flag(flag: str, message: str) -> None:
    child = _serve("--client-config", flag)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 2 and message in err and "tinkex serve: error" in err


# retrieve_futures ----------------------------------------------------------------------------


def _body(sampler: str, seq_id: int, max_tokens: int = 4, num_samples: int = 1) -> Dict[str, Any]:
    return {"sampling_session_id": sampler, "seq_id": seq_id, "num_samples": num_samples,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": [104, 105]}]},
            "sampling_params": {"max_tokens": max_tokens, "seed": 1}, "type": "sample"}  # fmt: skip


def _poll(api: RawApi, sampler: str, cursor: int, retrieved: List[str] = (), **extra: Any) -> Dict[str, Any]:  # type: ignore[assignment]
    target = {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": 0}
    return api.ok("retrieve_futures", {"target": target, "prev_cursor": cursor,
                                       "retrieved_request_ids": list(retrieved), **extra})  # fmt: skip


def test_poller_sequence_of_protocol_4_10(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=["tinkex/echo"], token_delay_ms=20, client_config=FLAGS)
    api = RawApi(server)
    sampler = api.sampler()
    ok = api.asample(_body(sampler, 0)).json()["request_id"]
    doomed = api.asample(_body(sampler, 1, max_tokens=200)).json()["request_id"]
    assert api.post("cancel_future", {"request_id": doomed}).status_code == 200

    seen: Dict[str, Dict[str, Any]] = {}
    cursor = 0
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:  # long polls until both are reported
        poll = _poll(api, sampler, cursor)
        seen.update({c["request_id"]: c for c in poll["completions"]})
        cursor = poll["cursor"]
    assert seen[doomed] == {"state": "failed", "request_id": doomed}
    assert seen[ok]["state"] == "finished"
    assert cursor == 2
    assert _poll(api, sampler, cursor, timeout=0.0) == {"completions": [], "cursor": 2}  # ack-only poll

    result = api.post("retrieve_future", {"request_id": ok, "allow_metadata_only": False},
                      headers={"Accept": PROTOBUF})  # fmt: skip
    assert result.headers["Content-Type"].startswith(PROTOBUF)
    assert len(result.content) == seen[ok]["response_payload_uncompressed_size"]
    failed = api.ok("retrieve_future", {"request_id": doomed, "allow_metadata_only": False})
    assert failed["category"] == "user" and "cancel" in failed["error"]

    assert _poll(api, sampler, cursor, [ok, doomed], timeout=0.0)["completions"] == []
    delivered = {r["request_id"]: r["delivered"] for r in server.records(sampler)}
    assert delivered == {ok: True, doomed: True}  # acknowledged: retention clock started


def test_allow_metadata_only_for_a_large_result(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=["tinkex/echo"], metadata_threshold_bytes=1000, client_config=FLAGS)
    api = RawApi(server)
    sampler = api.sampler()
    request_id = api.asample(_body(sampler, 0, max_tokens=400, num_samples=4)).json()["request_id"]
    (completion,) = _poll(api, sampler, 0)["completions"]
    size = completion["response_payload_uncompressed_size"]
    assert size > 1000
    metadata = api.ok("retrieve_future", {"request_id": request_id, "allow_metadata_only": True},
                      headers={"Accept": PROTOBUF})  # fmt: skip
    assert metadata == {"status": "complete_metadata", "response_payload_size": size}
    full = api.post("retrieve_future", {"request_id": request_id, "allow_metadata_only": False},
                    headers={"Accept": PROTOBUF})  # fmt: skip
    assert len(full.content) == size


def test_a_cursor_past_the_end_loses_no_completion(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=["tinkex/echo"], client_config=FLAGS)
    api = RawApi(server)
    sampler = api.sampler()
    ids = [api.asample(_body(sampler, seq)).json()["request_id"] for seq in range(3)]
    assert _poll(api, sampler, 0, timeout=0.0)["cursor"] == 3
    started = time.monotonic()
    stale = _poll(api, sampler, 50)  # e.g. a poller that outlived a restart: answered at once
    assert time.monotonic() - started < 1.0
    assert sorted(c["request_id"] for c in stale["completions"]) == sorted(ids) and stale["cursor"] == 3
    assert _poll(api, sampler, 2, timeout=0.0)["completions"][0]["request_id"] in ids  # entry 2 still there
