"""Idempotent resubmits, long polls, queue states, limits, cancellation and expiry."""

from __future__ import annotations

import time
from typing import Callable

from tests.with_server.conftest import PROTOBUF, FakeClock, RawApi, sample_body
from tinkex._wire.proto import decode_sample_response
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL

SLOW = {"max_tokens": 200}  # with token_delay_ms=50: 10 s of generation, always cancelled first


def _heartbeat(api: RawApi, session_id: str) -> int:
    return api.post("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"}).status_code


def test_resubmit_is_the_same_request_and_generates_once(api: RawApi, local_server: LocalServer) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    body = sample_body(sampler, 0, sampling_params={"max_tokens": 64})
    first, again = api.asample(body).json(), api.asample(body).json()
    assert again == first
    result = api.result(first["request_id"]).content
    assert api.asample(body).json() == first
    assert api.result(first["request_id"]).content == result
    other = api.asample(sample_body(sampler, 1)).json()
    assert other["request_id"] != first["request_id"]
    generations = {(r["seq_id"], r["generations"]) for r in local_server.records(sampler)}
    assert generations == {(0, 1), (1, 1)}


def test_request_ids_are_unguessable(api: RawApi) -> None:
    sampler = api.sampler()
    ids = [api.asample(sample_body(sampler, seq)).json()["request_id"] for seq in range(3)]
    assert len(set(ids)) == 3
    assert all(len(rid) >= 20 and sampler not in rid for rid in ids)


def test_pending_poll_is_held_then_answered_try_again(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(poll_hold_s=0.3, token_delay_ms=50))
    request_id = api.asample(sample_body(api.sampler(), 0, sampling_params=SLOW)).json()["request_id"]
    began = time.monotonic()
    answer = api.retrieve(request_id).json()
    held = time.monotonic() - began
    assert answer == {"type": "try_again", "request_id": request_id, "queue_state": "active"}
    assert 0.25 <= held < 3.0
    api.post("cancel_future", {"request_id": request_id})


def test_poll_is_answered_as_soon_as_the_result_is_ready(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(poll_hold_s=20.0, token_delay_ms=20))
    request_id = api.asample(sample_body(api.sampler(), 0, sampling_params={"max_tokens": 10})).json()["request_id"]
    began = time.monotonic()
    answer = api.retrieve(request_id)
    waited = time.monotonic() - began
    assert answer.headers["Content-Type"].startswith(PROTOBUF)
    assert len(decode_sample_response(answer.content).sequences[0].tokens) == 10
    assert waited < 10.0  # released by completion (~0.2 s), not by the 20 s hold


def test_saturated_scheduler_reports_paused_capacity(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(poll_hold_s=0.2, token_delay_ms=50, max_concurrent_generations=1))
    sampler = api.sampler()
    running = api.asample(sample_body(sampler, 0, sampling_params=SLOW)).json()["request_id"]
    queued = api.asample(sample_body(sampler, 1, sampling_params=SLOW)).json()["request_id"]
    answer = api.retrieve(queued).json()
    assert answer["type"] == "try_again" and answer["queue_state"] == "paused_capacity"
    assert "capacity" in answer["queue_state_reason"]
    assert api.retrieve(running).json()["queue_state"] == "active"
    for request_id in (running, queued):
        api.post("cancel_future", {"request_id": request_id})
    assert api.retrieve(queued).json()["category"] == "user"


def test_session_pending_limit_answers_429(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(token_delay_ms=50, session_pending_limit=2))
    sampler = api.sampler()
    pending = [api.asample(sample_body(sampler, seq, sampling_params=SLOW)).json()["request_id"] for seq in (0, 1)]
    refused = api.asample(sample_body(sampler, 2))
    assert refused.status_code == 429
    assert refused.json()["queue_state"] == "paused_rate_limit" and "limit" in refused.json()["queue_state_reason"]
    assert api.asample(sample_body(sampler, 0, sampling_params=SLOW)).json()["request_id"] == pending[0]
    api.post("cancel_future", {"request_id": pending[0]})
    assert api.asample(sample_body(sampler, 2)).status_code == 200
    api.post("cancel_future", {"request_id": pending[1]})


def test_cancel_future_stops_the_generation(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(token_delay_ms=50)
    api = RawApi(server)
    sampler = api.sampler()
    request_id = api.asample(sample_body(sampler, 0, sampling_params=SLOW)).json()["request_id"]
    assert api.post("cancel_future", {"request_id": request_id}).status_code == 200
    failed = api.retrieve(request_id).json()
    assert failed["category"] == "user" and "cancel" in failed["error"]
    (record,) = server.records(sampler)
    assert record["state"] == "cancelled"
    deadline = time.monotonic() + 5  # the worker sees the cancel at its next token, on its own thread
    while server.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = server.stats()
    assert stats["cancels"] == 1 and stats["running"] == 0


def test_prompt_alt_tokens_k_is_answered_not_failed(api: RawApi) -> None:
    request_id = api.asample(sample_body(api.sampler(), 0, prompt_alt_tokens_k=2)).json()["request_id"]
    answer = api.retrieve(request_id, protobuf=False).json()
    assert answer["prompt_alt_tokens"]["tokens"]["shape"] == [len(b"Hello") - 1, 2]  # see test_server_prompt_extras


def test_session_without_heartbeat_expires(fresh_server: Callable[..., LocalServer]) -> None:
    clock = FakeClock()
    server = fresh_server(clock=clock, session_expiry_s=30, token_delay_ms=50)
    api = RawApi(server)
    kept, dropped = api.session(), api.session()
    sampler = api.sampler(session_id=dropped)
    pending = api.asample(sample_body(sampler, 0, sampling_params=SLOW)).json()["request_id"]
    for _ in range(3):
        clock.advance(20)
        assert _heartbeat(api, kept) == 200
        server.sweep()
    assert _heartbeat(api, kept) == 200
    beat = api.post("session_heartbeat", {"session_id": dropped, "type": "session_heartbeat"})
    assert beat.status_code == 410 and "heartbeat" in beat.json()["detail"]
    assert api.retrieve(pending).status_code == 410
    refused = api.asample(sample_body(sampler, 1))
    assert refused.status_code == 400 and "expired" in refused.json()["detail"]
    stats = server.stats()
    assert stats["sessions_expired"] == 1 and stats["running"] == 0


def test_unretrieved_promise_expires_with_410(fresh_server: Callable[..., LocalServer]) -> None:
    clock = FakeClock()
    server = fresh_server(clock=clock, promise_expiry_s=60, tombstone_s=600, session_expiry_s=10_000)
    api = RawApi(server)
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    clock.advance(59)
    server.sweep()
    clock.advance(2)
    server.sweep()
    assert api.retrieve(request_id).status_code == 410
    clock.advance(601)
    server.sweep()
    assert api.retrieve(request_id).status_code == 404  # the tombstone is gone too


def test_delivered_result_is_kept_for_the_retention_time(fresh_server: Callable[..., LocalServer]) -> None:
    clock = FakeClock()
    server = fresh_server(clock=clock, result_retention_s=10, session_expiry_s=10_000)
    api = RawApi(server)
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    assert api.result(request_id).status_code == 200
    clock.advance(9)
    server.sweep()
    assert api.result(request_id).status_code == 200
    clock.advance(2)
    server.sweep()
    assert api.retrieve(request_id).status_code == 410


def test_finishing_a_session_cancels_its_work(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(token_delay_ms=50)
    api = RawApi(server)
    session_id = api.session()
    request_id = api.asample(sample_body(api.sampler(session_id=session_id), 0, sampling_params=SLOW)).json()[
        "request_id"
    ]
    api.ok(f"sessions/{session_id}/finish", {"reason": {"type": "interrupted"}, "detail": None})
    assert api.retrieve(request_id).status_code == 410
    deadline = time.monotonic() + 5  # the worker sees the cancel at its next token, on its own thread
    while server.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = server.stats()
    assert stats["sessions_finished"] == 1 and stats["running"] == 0
