"""API keys: required everywhere, restricted by --api-key, and everything bound to the key that made it."""

from __future__ import annotations

from typing import Callable

import pytest
import requests

from tests.with_server.conftest import RawApi, sample_body
from tinkex.errors import ValidationError
from tinkex.server import LocalServer
from tinkex.server._routes import ROUTE_PATHS


@pytest.mark.parametrize("name", sorted(ROUTE_PATHS))
def test_every_route_needs_a_key(local_server: LocalServer, name: str) -> None:
    method, path = ROUTE_PATHS[name]
    path = path.replace("{sampler_id}", "x").replace("{session_id}", "x")
    api = RawApi(local_server, key="")
    response = api.get(path) if method == "GET" else api.post(path, {})
    assert response.status_code == 401
    assert response.json() == {"detail": "missing X-API-Key header"}


def test_admin_stats_needs_a_key(local_server: LocalServer) -> None:
    assert RawApi(local_server, key="").get("admin/stats").status_code == 401
    assert RawApi(local_server).get("admin/stats").status_code == 200
    short = local_server.base_url + "/admin/stats"
    assert requests.get(short, timeout=10).status_code == 401
    answer = requests.get(short, headers={"X-API-Key": local_server.admin_key}, timeout=10)
    assert answer.status_code == 200 and "faults_total" in answer.json()


def test_default_mode_accepts_any_tml_key(local_server: LocalServer) -> None:
    assert RawApi(local_server, key="tml-anything-at-all").get("healthz").status_code == 200
    refused = RawApi(local_server, key="sk-not-tinker").get("healthz")
    assert refused.status_code == 401
    assert "sk-not-tinker" not in refused.text and "tml-" in refused.json()["detail"]


def test_header_name_is_case_insensitive(api: RawApi) -> None:
    response = api.http.get(api.base + "healthz", headers={"x-api-key": api.key})
    assert response.status_code == 200


def test_configured_keys_restrict_access(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(api_keys=["tml-alpha", "tml-beta"])
    assert server.api_key == "tml-alpha"
    assert RawApi(server, key="tml-beta").get("healthz").status_code == 200
    refused = RawApi(server, key="tml-gamma").get("healthz")
    assert refused.status_code == 401 and refused.json() == {"detail": "invalid API key"}


def test_non_loopback_bind_requires_keys() -> None:
    with pytest.raises(ValidationError, match="api_keys"):
        LocalServer(host="0.0.0.0")
    LocalServer(host="0.0.0.0", api_keys=["tml-x"])  # constructing is enough; not started


def test_other_keys_cannot_touch_what_a_key_created(local_server: LocalServer) -> None:
    owner, stranger = RawApi(local_server, key="tml-owner"), RawApi(local_server, key="tml-stranger")
    session_id = owner.session()
    sampler = owner.sampler(session_id=session_id)
    request_id = owner.asample(sample_body(sampler, 0)).json()["request_id"]
    assert stranger.retrieve(request_id).status_code == 404
    assert stranger.post("cancel_future", {"request_id": request_id}).status_code == 404
    assert stranger.post("session_heartbeat", {"session_id": session_id}).status_code == 404
    assert stranger.post(f"sessions/{session_id}/finish", {"reason": {"type": "success"}}).status_code == 404
    assert stranger.get(f"samplers/{sampler}").status_code == 404
    assert stranger.post("join_sampling_session", {"sampling_session_id": sampler}).status_code == 404
    assert stranger.asample(sample_body(sampler, 1)).status_code == 400
    body = {"session_id": session_id, "sampling_session_seq_id": 5, "base_model": "tinkex/echo"}
    assert stranger.post("create_sampling_session", body).status_code == 404
    assert stranger.asample(sample_body(sampler, 0)).status_code == 400  # not even the idempotent pair
    assert owner.result(request_id).status_code == 200
