"""The key in every spelling a server can quote it back in, user headers on redirects, unreadable bodies.

Issue 16 items 12 and 13. The keys hold a backslash and both quote characters, so their raw,
repr-escaped, JSON-escaped and URL-encoded forms all differ; the checks below spell each form
themselves (not with the redaction code under test).
"""

from __future__ import annotations

import json
import pickle
import time
import urllib.parse
from typing import Iterator, List

import pytest

import tinkex
from tests.reliability.hostile_server import ASAMPLE_PATH, HostileServer, json_reply, redirect, reply
from tinkex import errors, types

KEYS = ["tml-back\\slash-\"dq\"-'sq'-8f3a", "tml-\\\\two-'\"-b\\\\\\\\"]
RETRIEVE, CONFIG = "/api/v1/retrieve_future", "/api/v1/client/config"
PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)


def spellings(key: str) -> List[str]:
    """The key as a raw string, a Python repr (either quote), JSON, and URL-encoded."""
    json_escaped = json.dumps(key)[1:-1]
    return [key, repr(key)[1:-1], repr(key + '"')[1:-2], repr(key + "'")[1:-2], json_escaped,
            repr(json_escaped)[1:-1], urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)]


def assert_nowhere(error: BaseException, key: str) -> None:
    texts = [str(error), repr(error), repr(error.args), repr(vars(error)),
             str(getattr(error, "detail", "") or "")]
    pickled = pickle.dumps(error)
    for form in spellings(key):
        for text in texts:
            assert form not in text, f"the key ({form!r}) leaked into: {text[:300]}"
        assert form.encode() not in pickled, f"the key ({form!r}) leaked into the pickled error"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def sample_error(server: HostileServer, key: str, **service: object) -> BaseException:
    with tinkex.ServiceClient(api_key=key, base_url=server.base_url, **service) as client:  # type: ignore[arg-type]
        sampler = client.create_sampling_client(base_model="m")
        error = sampler.sample(PROMPT, 1, PARAMS, timeout=5).exception(20)
    assert error is not None
    return error


def quoting(key: str, kind: str) -> tuple:
    """(route, behaviour, expected error) for a server that quotes ``key`` back as ``kind``."""
    if kind == "failed future, JSON-escaped":
        return RETRIEVE, json_reply({"error": f"invalid key {key}", "category": "user"}), errors.RequestFailedError
    if kind == "failed future, URL-encoded":
        return RETRIEVE, json_reply({"error": f"GET /x?key={urllib.parse.quote(key, safe='')}&k2="
                                              f"{urllib.parse.quote_plus(key)}", "category": "user"}), \
            errors.RequestFailedError
    if kind == "400 body":
        return ASAMPLE_PATH, json_reply({"detail": f"key {key} is not allowed"}, 400), errors.BadRequestError
    if kind == "400 body, unicode escapes":
        escaped = "".join(f"\\u{ord(c):04x}" for c in key)
        return ASAMPLE_PATH, reply(400, b'{"detail": "key ' + escaped.encode() + b'"}'), errors.BadRequestError
    if kind == "undecodable promise":
        return ASAMPLE_PATH, reply(200, b'{"request_id": "' + json.dumps(key)[1:-1].encode() + b'", oops'), \
            errors.DecodeError
    raise AssertionError(kind)


KINDS = ["failed future, JSON-escaped", "failed future, URL-encoded", "400 body", "400 body, unicode escapes",
         "undecodable promise"]


@pytest.mark.parametrize("key", KEYS, ids=["one-backslash", "two-backslashes"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_key_quoted_back_is_redacted_in_every_form(hostile: HostileServer, key: str, kind: str) -> None:
    route, behaviour, expected = quoting(key, kind)
    hostile.on(route, behaviour)
    error = sample_error(hostile, key)
    assert isinstance(error, expected), repr(error)
    assert_nowhere(error, key)
    assert "<redacted>" in str(error) or "<redacted>" in str(getattr(error, "body", ""))


@pytest.mark.parametrize("key", KEYS, ids=["one-backslash", "two-backslashes"])
def test_a_handshake_answer_quoting_the_key_is_redacted(hostile: HostileServer, key: str) -> None:
    hostile.on(CONFIG, reply(200, b'{"echo": "' + json.dumps(key)[1:-1].encode() + b'" oops'))
    with tinkex.ServiceClient(api_key=key, base_url=hostile.base_url) as client, \
            pytest.raises(errors.DecodeError) as caught:
        client.create_sampling_client(base_model="m", timeout=10)
    assert_nowhere(caught.value, key)


def test_every_user_header_is_dropped_on_a_redirect_to_another_host(hostile: HostileServer) -> None:
    key = KEYS[0]
    headers = {"X-Team-Token": "team-secret-123", "X-Tenant": "acme"}
    with HostileServer(host="127.0.0.2") as elsewhere:
        elsewhere.on(ASAMPLE_PATH, json_reply({"detail": "who are you?"}, 401))
        hostile.on(ASAMPLE_PATH, redirect(elsewhere.base_url + ASAMPLE_PATH))
        error = sample_error(hostile, key, default_headers=headers)
        assert isinstance(error, errors.AuthenticationError), repr(error)
        landed = elsewhere.calls(ASAMPLE_PATH)
        assert landed
        for call in landed:
            sent = {name.lower() for name in call.headers}
            assert not {"x-team-token", "x-tenant", "x-api-key"} & sent, call.headers
    first = hostile.calls(ASAMPLE_PATH)[0]
    assert first.headers.get("X-Team-Token") == "team-secret-123"  # the configured host still gets them


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_error_body_gives_a_readable_message_without_nuls(hostile: HostileServer, encoding: str) -> None:
    hostile.on(ASAMPLE_PATH, reply(400, '{"detail": "unknown base_model m"}'.encode(encoding)))
    started = time.monotonic()
    error = sample_error(hostile, KEYS[0])
    assert isinstance(error, errors.BadRequestError), repr(error)
    assert time.monotonic() - started < 10
    for text in (str(error), error.body or "", error.detail or ""):
        assert "\x00" not in text, repr(text)
    assert error.detail == "unknown base_model m"


def test_nul_escapes_in_a_json_error_body_stay_out_of_messages(hostile: HostileServer) -> None:
    hostile.on(ASAMPLE_PATH, reply(400, b'{"detail": "bad\\u0000 model\\u0007"}'))
    error = sample_error(hostile, KEYS[0])
    assert isinstance(error, errors.BadRequestError), repr(error)
    assert error.detail == "bad model"
    assert "\x00" not in str(error) and "\\u0000" not in str(error)
