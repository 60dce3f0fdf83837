"""The typed error of a non-2xx answer: the key scrubbed from every string of a JSON body, however
deeply nested, and the request id taken from the header before the body."""

from __future__ import annotations

import json

from tests.support.virtual_clock import VirtualClock
from tinkex._config import Config
from tinkex._http import FakeTransport

KEY = "tml-error-body-secret-0001"


def fake() -> FakeTransport:
    return FakeTransport(Config.from_env(api_key=KEY, base_url="http://fake.invalid"), clock=VirtualClock().clock())


def test_the_key_is_scrubbed_from_strings_inside_lists_and_other_values_are_kept() -> None:
    transport = fake()
    body = {"detail": [f"bad key {KEY}", 3, None, True, {"nested": [KEY]}], "request_id": "from-body"}
    transport.on("asample", (401, json.dumps(body).encode()))
    error = transport.error_for(transport.request("POST", "asample", body={}, check=False))
    assert KEY not in str(error) and KEY not in (error.body or "")
    detail = json.loads(error.body or "")["detail"]
    assert detail[1:4] == [3, None, True] and KEY not in json.dumps(detail)
    assert error.request_id == "from-body"


def test_the_request_id_header_wins_over_the_body() -> None:
    transport = fake()
    transport.on("asample", (500, b'{"request_id": "from-body"}', {"x-request-id": "from-header"}))
    error = transport.error_for(transport.request("POST", "asample", body={}, check=False, max_retries=0))
    assert error.request_id == "from-header" and error.status_code == 500
