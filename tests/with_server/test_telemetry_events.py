"""What a session reports to ``/api/v1/telemetry`` over real HTTP (protocol 4.13, 7.9; issue 14 item 12).

A user's mistake (a 4xx, or a failure in the ``user`` category) is a WARNING ``GENERIC_EVENT``
named ``user_error``; a server-side failure is an ERROR ``UNHANDLED_EXCEPTION``; the session's
events end with ``SESSION_END`` when the client closes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterator, List

import pytest

import tinkex
from tests.fake_tinker import KEY, FakeTinker, json_answer, result_answer
from tinkex import errors, types

PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)
ASAMPLE, RETRIEVE, TELEMETRY = "/api/v1/asample", "/api/v1/retrieve_future", "/api/v1/telemetry"


@pytest.fixture
def fake() -> Iterator[FakeTinker]:
    with FakeTinker() as server:
        yield server


def sent_events(server: FakeTinker) -> List[Dict[str, Any]]:
    return [event for call in server.calls(TELEMETRY) for event in json.loads(call.body)["events"]]


def test_user_errors_server_failures_and_the_session_end(fake: FakeTinker) -> None:
    fake.queue(ASAMPLE, json_answer(400, {"detail": "prompt too long"}))
    fake.queue(RETRIEVE, json_answer(200, {"error": "stop sequence too long", "category": "user"}),
               json_answer(200, {"error": "model exploded", "category": "server"}), result_answer())
    with tinkex.ServiceClient(api_key=KEY, base_url=fake.base_url) as service:
        client = service.create_sampling_client(base_model="m")
        raised = [client.sample(PROMPT, 1, PARAMS).exception(20) for _ in range(3)]
        assert client.sample(PROMPT, 1, PARAMS).result(20).sequences[0].tokens == [7, 8, 9]
    assert [type(error) for error in raised] == [errors.BadRequestError, errors.RequestFailedError,
                                                 errors.RequestFailedError]
    events = sent_events(fake)
    assert [(e["event"], e["severity"], e.get("event_name")) for e in events] == [
        ("SESSION_START", "INFO", None),
        ("GENERIC_EVENT", "WARNING", "user_error"),
        ("GENERIC_EVENT", "WARNING", "user_error"),
        ("UNHANDLED_EXCEPTION", "ERROR", None),
        ("SESSION_END", "INFO", None),
    ]
    bad_request, failed_user = events[1]["event_data"], events[2]["event_data"]
    assert (bad_request["error_type"], bad_request["status_code"]) == ("BadRequestError", 400)
    assert "prompt too long" in bad_request["error_message"]
    assert (failed_user["category"], failed_user["request_id"]) == ("user", "req-1")
    assert events[3]["error_type"] == "RequestFailedError" and "model exploded" in events[3]["error_message"]
    assert re.fullmatch(r"\d+:\d\d:\d\d(\.\d{6})?", events[4]["duration"])
    assert [e["event_session_index"] for e in events] == list(range(5))
    assert KEY not in json.dumps(events)


def test_a_closed_session_ends_once(fake: FakeTinker) -> None:
    service = tinkex.ServiceClient(api_key=KEY, base_url=fake.base_url)
    service.create_sampling_client(base_model="m")
    service.close()
    service.close()
    assert [e["event"] for e in sent_events(fake)] == ["SESSION_START", "SESSION_END"]
