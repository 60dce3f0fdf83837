"""Each row of protocol.md 7.2's status table, against a scripted Tinker on 127.0.0.1.

Exact answer sequences (one 429, then a 200) need a scripted peer; the fault profiles of the
local server cover the same rows statistically in the chaos tests.
"""

from __future__ import annotations

import logging
from typing import Iterator, List, Tuple

import pytest

import tinkex
from tests.fake_tinker import KEY, SSID, FakeTinker, VirtualTime, json_answer, result_answer
from tests.scripted_server import Answer
from tinkex import errors, types

PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)
ASAMPLE, RETRIEVE = "/api/v1/asample", "/api/v1/retrieve_future"


@pytest.fixture
def fake() -> Iterator[FakeTinker]:
    with FakeTinker() as server:
        yield server


def open_client(server: FakeTinker, vt: VirtualTime, **kwargs: object) -> Tuple[tinkex.ServiceClient,
                                                                               tinkex.SamplingClient]:
    service = tinkex.ServiceClient(api_key=KEY, base_url=server.base_url, clock=vt.clock())
    return service, service.create_sampling_client(base_model="m", **kwargs)  # type: ignore[arg-type]


def sample(server: FakeTinker, **kwargs: object) -> Tuple[types.SampleResponse, VirtualTime]:
    vt = VirtualTime()
    service, client = open_client(server, vt, **kwargs)
    try:
        return client.sample(PROMPT, 1, PARAMS).result(20), vt
    finally:
        service.close()


def sample_error(server: FakeTinker, **kwargs: object) -> Tuple[BaseException, VirtualTime]:
    vt = VirtualTime()
    service, client = open_client(server, vt, **kwargs)
    try:
        future = client.sample(PROMPT, 1, PARAMS)
        error = future.exception(20)
        assert error is not None
        return error, vt
    finally:
        service.close()


def test_handshake_order_and_first_sample(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, result_answer([4, 5, 6]))
    result, _ = sample(fake)
    paths = [r.path for r in fake.requests]
    assert paths[:5] == ["/api/v1/client/config", "/api/v1/client/dynamic_config", "/api/v1/create_session",
                         "/api/v1/create_sampling_session", ASAMPLE]
    assert result.sequences[0].tokens == [4, 5, 6] and result.sequences[0].sequence_id == "req-0:seq:0"
    assert fake.calls(ASAMPLE)[0].headers["X-Tinker-Sampling-Backpressure"] == "1"
    poll = fake.calls(RETRIEVE)[0]
    assert "application/x-protobuf" in poll.headers["Accept"]
    assert poll.headers["X-Tinker-Request-Type"] == "Sample" and poll.headers["X-Tinker-Request-Iteration"] == "0"
    assert fake.poll_bodies()[0] == {"request_id": "req-0", "allow_metadata_only": True}


@pytest.mark.parametrize("status", [500, 503, 408, 409])
def test_asample_transient_resubmits_with_the_same_seq_id(fake: FakeTinker, status: int) -> None:
    fake.queue(ASAMPLE, json_answer(status, {"detail": "x"}), json_answer(status, {"detail": "x"}))
    fake.queue(RETRIEVE, result_answer())
    _, vt = sample(fake)
    assert fake.seq_ids() == [0, 0, 0]
    assert vt.sleeps[:2] == [1.0, 2.0]


def test_asample_bare_400_is_resubmitted(fake: FakeTinker) -> None:
    fake.queue(ASAMPLE, Answer(status=400, body=b"", headers=()))
    fake.queue(RETRIEVE, result_answer())
    sample(fake)
    assert fake.seq_ids() == [0, 0]


def test_asample_429_backs_off_one_second_then_resubmits_same_seq_id(fake: FakeTinker,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    fake.queue(ASAMPLE, json_answer(429, {"queue_state": "paused_capacity", "queue_state_reason": "server says wait"}))
    fake.queue(RETRIEVE, result_answer())
    with caplog.at_level(logging.WARNING, logger="tinkex"):
        _, vt = sample(fake)
    assert fake.seq_ids() == [0, 0]
    assert 0.7 <= sum(vt.sleeps) <= 1.3
    assert f"Sampling is paused for {SSID}. Reason: server says wait" in caplog.text


def test_large_request_429_backs_off_five_seconds(fake: FakeTinker) -> None:
    fake.queue(ASAMPLE, json_answer(429, {}))
    fake.queue(RETRIEVE, result_answer())
    vt = VirtualTime()
    service, client = open_client(fake, vt)
    with service:
        client.sample(types.ModelInput.from_ints([1] * 15_000), 1, PARAMS).result(20)
    assert 4.9 <= sum(vt.sleeps) <= 5.5


@pytest.mark.parametrize("status,cls", [(400, errors.BadRequestError), (401, errors.AuthenticationError),
                                        (403, errors.PermissionDeniedError), (422, errors.UnprocessableEntityError)])
def test_asample_client_errors_are_raised_once(fake: FakeTinker, status: int, cls: type) -> None:
    fake.always(ASAMPLE, json_answer(status, {"detail": "bad"}))
    error, _ = sample_error(fake)
    assert type(error) is cls and len(fake.calls(ASAMPLE)) == 1


def test_try_again_reports_queue_state_and_waits_a_floor(fake: FakeTinker) -> None:
    seen: List[Tuple[str, object]] = []

    class Observer:
        def on_queue_state_change(self, state: types.QueueState, metadata: dict) -> None:
            seen.append((state.value, metadata.get("queue_state_reason")))

    try_again = json_answer(200, {"type": "try_again", "request_id": "req-0", "queue_state": "paused_rate_limit",
                                  "queue_state_reason": "server throttle"})
    fake.queue(RETRIEVE, try_again, try_again, result_answer())
    _, vt = sample(fake, queue_state_observer=Observer())
    assert seen == [("paused_rate_limit", "server throttle")]  # reported once: only changes are
    assert len(fake.calls(RETRIEVE)) == 3 and any(0 < s <= 0.1 for s in vt.sleeps)
    assert [b["allow_metadata_only"] for b in fake.poll_bodies()] == [True, True, True]


@pytest.mark.parametrize("status", [408, 500, 503])
def test_poll_408_and_5xx_repoll_the_same_request(fake: FakeTinker, status: int) -> None:
    fake.queue(RETRIEVE, json_answer(status, {"queue_state": "paused_capacity"}), result_answer())
    sample(fake)
    assert [b["request_id"] for b in fake.poll_bodies()] == ["req-0", "req-0"] and fake.seq_ids() == [0]
    assert [c.headers["X-Tinker-Request-Iteration"] for c in fake.calls(RETRIEVE)] == ["0", "1"]


def test_poll_429_and_bare_400_sleep_exponentially(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, json_answer(429, {}), Answer(status=400, body=b"", headers=()), json_answer(429, {}),
               result_answer())
    _, vt = sample(fake)
    assert [s for s in vt.sleeps if s >= 1] == [1.0, 2.0, 4.0]


def test_poll_400_with_body_repolls_three_times_then_fails(fake: FakeTinker) -> None:
    fake.always(RETRIEVE, json_answer(400, {"detail": "weird"}))
    error, _ = sample_error(fake)
    assert isinstance(error, errors.BadRequestError) and len(fake.calls(RETRIEVE)) == 4


def test_poll_402_pauses_five_seconds(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, json_answer(402, {"detail": "billing"}), result_answer())
    _, vt = sample(fake)
    assert 5.0 in vt.sleeps


def test_poll_410_resubmits_with_a_new_seq_id(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, json_answer(410, {"detail": "expired"}), result_answer())
    _, vt = sample(fake)
    assert fake.seq_ids() == [0, 1]
    assert [b["request_id"] for b in fake.poll_bodies()] == ["req-0", "req-1"]
    assert 0.375 <= vt.sleeps[0] <= 0.625


@pytest.mark.parametrize("status,cls", [(401, errors.AuthenticationError), (403, errors.PermissionDeniedError),
                                        (404, errors.NotFoundError), (409, errors.ConflictError),
                                        (422, errors.UnprocessableEntityError)])
def test_poll_fatal_statuses(fake: FakeTinker, status: int, cls: type) -> None:
    fake.always(RETRIEVE, json_answer(status, {"detail": "no"}))
    error, _ = sample_error(fake)
    assert type(error) is cls and len(fake.calls(RETRIEVE)) == 1 and fake.seq_ids() == [0]


@pytest.mark.parametrize("category", ["user", "server", "unknown", "weird"])
def test_failed_future_is_terminal(fake: FakeTinker, category: str) -> None:
    fake.always(RETRIEVE, json_answer(200, {"error": "model exploded", "category": category}))
    error, _ = sample_error(fake)
    assert isinstance(error, errors.RequestFailedError)
    assert error.request_id == "req-0" and error.category == (category if category != "weird" else "unknown")
    assert "model exploded" in str(error) and len(fake.calls(RETRIEVE)) == 1 and fake.seq_ids() == [0]


def test_complete_metadata_then_full_result(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, json_answer(200, {"status": "complete_metadata", "response_payload_size": 96}),
               result_answer())
    sample(fake)
    assert [b["allow_metadata_only"] for b in fake.poll_bodies()] == [True, False]


def test_dropped_poll_connection_is_repolled(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, Answer(drop=True), result_answer())
    _, vt = sample(fake)
    assert len(fake.calls(RETRIEVE)) == 2 and 1.0 in vt.sleeps


def test_legacy_json_result_decodes(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, json_answer(200, {"type": "sample", "sequences": [
        {"tokens": [3, 4], "logprobs": [-1.0, -2.0], "stop_reason": "stop"}], "prompt_logprobs": None}))
    result, _ = sample(fake)
    assert result.sequences[0].tokens == [3, 4] and result.sequences[0].stop_reason == "stop"


def test_retries_disabled_by_server_config() -> None:
    with FakeTinker(client_config={"sample_no_retries": True}) as server:
        server.queue(RETRIEVE, json_answer(410, {}))
        error, _ = sample_error(server)
        assert isinstance(error, errors.PromiseExpiredError) and server.seq_ids() == [0]


def test_compute_logprobs_request_shape(fake: FakeTinker) -> None:
    fake.queue(RETRIEVE, result_answer([1], prompt_logprobs=[None, -0.5, -1.5]))
    vt = VirtualTime()
    service, client = open_client(fake, vt)
    with service:
        assert client.compute_logprobs(PROMPT).result(20) == [None, -0.5, -1.5]
    import json

    body = json.loads(fake.calls(ASAMPLE)[0].body)
    assert body["prompt_logprobs"] is True and body["num_samples"] == 1
    assert body["sampling_params"] == {"max_tokens": 1, "temperature": 1.0, "top_k": -1, "top_p": 1.0}
    assert fake.calls(ASAMPLE)[0].headers["x-sdk-method"] == "SamplingClient.compute_logprobs"


def test_deadline_bounds_the_whole_call(fake: FakeTinker) -> None:
    fake.always(RETRIEVE, json_answer(200, {"type": "try_again", "request_id": "req-0", "queue_state": "active"}))
    service = tinkex.ServiceClient(api_key=KEY, base_url=fake.base_url)
    with service:
        client = service.create_sampling_client(base_model="m")
        future = client.sample(PROMPT, 1, PARAMS, timeout=0.5)
        error = future.exception(5)
    assert isinstance(error, errors.APITimeoutError) and isinstance(error, TimeoutError)
    assert "req-0" in str(error)
