"""Errors raised by sample_stream never carry the API key, even when the server quotes it."""

from __future__ import annotations

import json

import pytest

import tinkex
from tests.fake_tinker import KEY, FakeTinker, json_answer
from tests.scripted_server import Answer
from tinkex import errors, types

PROMPT = types.ModelInput.from_ints([1, 2])
PARAMS = types.SamplingParams(max_tokens=2)


def _client(server: FakeTinker) -> tuple:
    service = tinkex.ServiceClient(api_key=KEY, base_url=server.base_url)
    return service, service.create_sampling_client(base_model="m")


def test_status_error_before_the_stream_is_scrubbed() -> None:
    with FakeTinker() as server:
        server.always("/api/v1/stream_sample", json_answer(400, {"detail": f"bad key {KEY}"}))
        service, client = _client(server)
        with service, pytest.raises(errors.BadRequestError) as info:
            client.sample_stream(PROMPT, PARAMS)
    assert KEY not in str(info.value) and KEY not in (info.value.body or "")


def test_error_event_quoting_the_key_is_scrubbed() -> None:
    event = json.dumps({"message": f"rejected {KEY}", "category": "user"})
    body = f"event: error\ndata: {event}\n\n".encode()
    with FakeTinker() as server:
        server.always("/api/v1/stream_sample", Answer(body=body, headers=(("Content-Type", "text/event-stream"),)))
        service, client = _client(server)
        with service, pytest.raises(errors.RequestFailedError) as info:
            list(client.sample_stream(PROMPT, PARAMS))
    assert info.value.category == "user" and "rejected" in str(info.value) and KEY not in str(info.value)
