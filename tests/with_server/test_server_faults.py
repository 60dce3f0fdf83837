"""Fault profiles: the spec grammar, and every injected kind as a client sees it, counted in /admin/stats."""

from __future__ import annotations

import time
from typing import Callable, List

import pytest
import requests

from tests.with_server.conftest import PROTOBUF, FakeClock, RawApi, sample_body
from tinkex.errors import ValidationError
from tinkex.server import FaultProfile, LocalServer
from tinkex.server.faults import FaultInjector, FaultRule, PauseWindow

SPEC = (
    "seed=1,asample.500=0.05,retrieve_future.429=0.05,drop_before=0.02,latency_ms=20,"
    "paused_capacity=2s/10s,sse_slow_ms=200"
)


def test_spec_grammar() -> None:
    profile = FaultProfile.parse(SPEC)
    assert profile.seed == 1
    assert FaultRule("asample", "500", 0.05) in profile.rules
    assert FaultRule("*", "drop_before", 0.02) in profile.rules
    assert FaultRule("*", "latency_ms", 20.0) in profile.rules
    assert profile.windows == (PauseWindow("paused_capacity", 2.0, 10.0),)
    assert profile.sse_slow_ms == 200
    assert FaultProfile.parse(profile.to_spec()) == profile
    assert FaultProfile.parse(profile.to_json()) == profile


def test_json_form_with_reasons() -> None:
    profile = FaultProfile.parse(
        '{"seed": 4, "retrieve_future.408": 0.5, '
        '"paused_rate_limit": {"duration_s": 1, "period_s": 5, "reason": "weights limit"}}'
    )
    assert profile.windows[0].reason_text == "weights limit"
    spec = FaultProfile.parse("paused_rate_limit=500ms,paused_rate_limit.reason=maintenance")
    assert spec.windows == (PauseWindow("paused_rate_limit", 0.5, None, "maintenance"),)


@pytest.mark.parametrize(
    "spec, named",
    [
        ("asample.500", "key=value"),
        ("asampel.500=0.1", "unknown route"),
        ("asample.501=0.1", "unknown kind"),
        ("500=1.5", "probability"),
        ("500=0.6,503=0.6", "add up"),
        ("seed=x", "seed"),
        ("latency_ms=-3", ">= 0"),
        ("paused_capacity=10s/5s", "period"),
        ("paused_capacity.reason=x", "window"),
        ('{"seed": ', "JSON"),
    ],
)
def test_bad_specs_are_refused(spec: str, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        FaultProfile.parse(spec)


def test_route_rules_override_the_wildcard_and_dice_follow_the_seed() -> None:
    profile = FaultProfile.parse("seed=9,500=0.3,asample.500=0.0,asample.429=0.5")
    rolls: List[List[object]] = []
    for _ in range(2):
        injector = FaultInjector(profile, clock=lambda: 0.0)
        rolls.append([injector.draw("asample") for _ in range(200)])
    assert rolls[0] == rolls[1]
    assert set(rolls[0]) == {None, "429"}
    assert 60 < rolls[0].count("429") < 140


def test_pause_windows_follow_the_clock() -> None:
    clock = FakeClock(0.0)
    injector = FaultInjector(FaultProfile.parse("paused_capacity=2s/10s"), clock)
    assert injector.pause() is not None and injector.pause()[1] == pytest.approx(2.0)  # type: ignore[index]
    clock.advance(2.5)
    assert injector.pause() is None
    clock.advance(8.0)
    window, left = injector.pause()  # type: ignore[misc]
    assert window.state == "paused_capacity" and left == pytest.approx(1.5)


STATUS_KINDS = ["408", "410", "429", "500", "503"]


@pytest.mark.parametrize("kind", STATUS_KINDS)
def test_status_faults(fresh_server: Callable[..., LocalServer], kind: str) -> None:
    server = fresh_server(faults=f"asample.{kind}=1")
    api = RawApi(server)
    response = api.asample(sample_body(api.sampler(), 0))
    assert response.status_code == int(kind)
    assert "injected fault" in response.json()["detail"]
    stats = server.stats()
    assert stats["faults"] == {kind: 1} and stats["faults_by_route"] == {f"asample.{kind}": 1}
    assert stats["generations_total"] == 0


def test_408_and_429_bodies_carry_queue_state(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(faults="retrieve_future.408=1,paused_rate_limit=60s"))
    answer = api.retrieve("req-anything")
    body = answer.json()
    assert answer.status_code == 408
    assert body["type"] == "try_again" and body["request_id"] == "req-anything"
    assert body["queue_state"] == "paused_rate_limit" and body["queue_state_reason"]


def test_empty_body_400(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="create_session.400=1")
    response = RawApi(server).post("create_session", {})
    assert response.status_code == 400 and response.content == b""
    assert response.headers["Content-Length"] == "0"
    assert server.stats()["faults"] == {"400": 1}


def test_drop_before_is_not_processed(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="create_session.drop_before=1")
    with pytest.raises(requests.ConnectionError):
        RawApi(server).post("create_session", {})
    stats = server.stats()
    assert stats["faults"] == {"drop_before": 1} and stats["sessions_created"] == 0


def test_drop_after_is_processed_but_unanswered(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="asample.drop_after=1")
    api = RawApi(server)
    sampler = api.sampler()
    with pytest.raises(requests.ConnectionError):
        api.asample(sample_body(sampler, 0))
    server.set_faults(None)
    promise = api.asample(sample_body(sampler, 0)).json()  # the resubmit finds the request it created
    assert [(r["request_id"], r["generations"]) for r in server.records(sampler)] == [(promise["request_id"], 1)]
    assert server.stats()["faults"] == {"drop_after": 1}


def test_latency(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="healthz.latency_ms=300")
    api = RawApi(server)
    began = time.monotonic()
    assert api.get("healthz").status_code == 200
    assert time.monotonic() - began >= 0.28
    began = time.monotonic()
    api.post("client/config", {})
    assert time.monotonic() - began < 0.28  # only the named route
    assert server.stats()["faults"] == {"latency_ms": 1}


def test_pause_window_holds_results_back(fresh_server: Callable[..., LocalServer]) -> None:
    clock = FakeClock()
    server = fresh_server(
        clock=clock, poll_hold_s=0.2, faults="paused_capacity=30s/600s,paused_capacity.reason=GPU swap"
    )
    api = RawApi(server)
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    answer = api.retrieve(request_id).json()
    assert answer == {"type": "try_again", "request_id": request_id, "queue_state": "paused_capacity",
                      "queue_state_reason": "GPU swap"}  # fmt: skip
    clock.advance(31)
    assert api.retrieve(request_id).headers["Content-Type"].startswith(PROTOBUF)


def test_set_faults_at_run_time_and_admin_stats(local_server: LocalServer, api: RawApi) -> None:
    try:
        local_server.set_faults({"seed": 2, "healthz.503": 1})
        assert api.get("healthz").status_code == 503
        stats = RawApi(local_server, key=local_server.admin_key).get("admin/stats").json()
        assert stats["faults_by_route"].get("healthz.503", 0) >= 1
        assert stats["statuses"]["healthz 503"] >= 1
        assert "healthz.503=1" in stats["faults_profile"]
    finally:
        local_server.set_faults(None)
    assert api.get("healthz").status_code == 200
    assert api.get("admin/stats").status_code == 200  # never faulted


def test_seeded_faults_repeat(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server()
    api = RawApi(server)
    runs = []
    for _ in range(2):
        server.set_faults("seed=5,healthz.500=0.5")
        runs.append([api.get("healthz").status_code for _ in range(30)])
    assert runs[0] == runs[1] and set(runs[0]) == {200, 500}
