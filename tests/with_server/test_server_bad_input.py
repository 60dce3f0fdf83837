"""Bad input gets a 4xx naming the problem; the server never leaks a traceback and keeps serving."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict

import pytest
import requests

from tests.with_server.conftest import RawApi, sample_body
from tinkex.server import LocalServer
from tinkex.server._engine import Engine
from tinkex.server.models import EchoModel


def _asample_error(api: RawApi, body: Any) -> requests.Response:
    response = api.asample(body)
    assert 400 <= response.status_code < 500, response.text
    assert "Traceback" not in response.text
    return response


def _with(sampler: str, **overrides: Any) -> Dict[str, Any]:
    return sample_body(sampler, 0, **overrides)


CASES = [
    ("missing prompt", lambda s: {k: v for k, v in _with(s).items() if k != "prompt"}, "prompt"),
    (
        "missing sampling_params",
        lambda s: {k: v for k, v in _with(s).items() if k != "sampling_params"},
        "sampling_params",
    ),
    ("num_samples as a string", lambda s: _with(s, num_samples="2"), "num_samples"),
    ("zero num_samples", lambda s: _with(s, num_samples=0), "num_samples"),
    ("negative num_samples", lambda s: _with(s, num_samples=-3), "num_samples"),
    ("huge num_samples", lambda s: _with(s, num_samples=10**6), "num_samples"),
    ("negative max_tokens", lambda s: _with(s, sampling_params={"max_tokens": -1}), "max_tokens"),
    ("huge max_tokens", lambda s: _with(s, sampling_params={"max_tokens": 10**9}), "max_tokens"),
    ("max_tokens as a float", lambda s: _with(s, sampling_params={"max_tokens": 2.5}), "max_tokens"),
    ("temperature as a string", lambda s: _with(s, sampling_params={"temperature": "hot"}), "temperature"),
    ("top_p out of range", lambda s: _with(s, sampling_params={"top_p": 1.5}), "top_p"),
    ("prompt longer than the context", lambda s: sample_body(s, 0, [65] * 8193), "context"),
    ("token outside the vocabulary", lambda s: sample_body(s, 0, [65, 300]), "300"),
    ("negative token", lambda s: sample_body(s, 0, [65, -1]), "tokens"),
    ("tokens not a list", lambda s: _with(s, prompt={"chunks": [{"tokens": "abc", "type": "encoded_text"}]}), "tokens"),
    ("unknown chunk type", lambda s: _with(s, prompt={"chunks": [{"type": "video"}]}), "video"),
    (
        "image chunk",
        lambda s: _with(s, prompt={"chunks": [{"data": "YWI=", "format": "png", "type": "image"}]}),
        "image",
    ),
    ("huge topk_prompt_logprobs", lambda s: _with(s, topk_prompt_logprobs=10_000), "topk_prompt_logprobs"),
    ("negative topk_sample_logprobs", lambda s: _with(s, topk_sample_logprobs=-1), "topk_sample_logprobs"),
    ("prompt_logprobs_last_n without prompt_logprobs", lambda s: _with(s, prompt_logprobs_last_n=2), "prompt_logprobs"),
    ("unknown sampling session", lambda s: _with(s + "x"), "sampling_session_id"),
    ("no sampler and no model", lambda s: _with(None), "base_model"),
    ("unknown base model", lambda s: {**_with(None), "base_model": "gpt-5"}, "gpt-5"),
    ("a list instead of an object", lambda s: [1, 2], "object"),
]


@pytest.mark.parametrize("case, make, named", CASES, ids=[case[0] for case in CASES])
def test_bad_sample_requests_get_400_naming_the_problem(api: RawApi, case: str, make: Callable, named: str) -> None:
    response = _asample_error(api, make(api.sampler()))
    assert response.status_code == 400
    assert named in response.json()["detail"]


def test_malformed_json_and_empty_bodies(api: RawApi) -> None:
    garbled = api.http.post(api.base + "asample", data=b'{"prompt": [', headers=api.headers())
    assert garbled.status_code == 400 and "invalid JSON" in garbled.json()["detail"]
    empty = api.http.post(api.base + "retrieve_future", data=b"", headers=api.headers())
    assert empty.status_code == 400 and "empty body" in empty.json()["detail"]
    nan = api.http.post(api.base + "create_session", data=b'{"tags": NaN}', headers=api.headers())
    assert nan.status_code == 400


@pytest.mark.parametrize(
    "route, body, named",
    [
        ("retrieve_future", {"allow_metadata_only": True}, "request_id"),
        ("retrieve_future", {"request_id": 5}, "request_id"),
        ("session_heartbeat", {"type": "session_heartbeat"}, "session_id"),
        ("create_sampling_session", {"session_id": "s", "base_model": "tinkex/echo"}, "sampling_session_seq_id"),
        ("create_session", {"tags": "a,b"}, "tags"),
        ("cancel_future", {}, "request_id"),
        ("join_sampling_session", {}, "sampling_session_id"),
        ("retrieve_futures", {"target": {}}, "target"),
        ("retrieve_futures", {"target": {"sampling_session_id": "x"}, "prev_cursor": -1}, "prev_cursor"),
    ],
)
def test_bad_bodies_on_other_routes(api: RawApi, route: str, body: Any, named: str) -> None:
    response = api.post(route, body)
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_unknown_ids(api: RawApi) -> None:
    assert api.retrieve("req-nope").status_code == 404
    assert api.post("session_heartbeat", {"session_id": "sess-nope"}).status_code == 404
    body = {"session_id": "sess-nope", "sampling_session_seq_id": 0, "base_model": "tinkex/echo"}
    assert api.post("create_sampling_session", body).status_code == 404
    assert api.get("samplers/sess-nope:sample:0").status_code == 404
    unknown_model = {**body, "session_id": api.session(), "base_model": "gpt-5"}
    refused = api.post("create_sampling_session", unknown_model)
    assert refused.status_code == 400 and "gpt-5" in refused.json()["detail"]
    bad_path = {**body, "session_id": api.session(), "base_model": None, "model_path": "tinker://run-1/weights/3"}
    assert api.post("create_sampling_session", bad_path).status_code == 400


def test_unknown_routes_and_methods_answer_json(api: RawApi) -> None:
    missing = api.post("no_such_route", {})
    assert missing.status_code == 404 and "no route" in missing.json()["detail"]
    wrong_method = api.get("asample")
    assert wrong_method.status_code == 405 and "not allowed" in wrong_method.json()["detail"]


def test_oversized_bodies_get_413(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(max_body_bytes=2048))
    sampler = api.sampler()
    too_big = api.asample(sample_body(sampler, 0, [65] * 2000))
    assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
    chunked = api.http.post(api.base + "asample", data=iter([b"{" + b" " * 4096 + b"}"]), headers=api.headers())
    assert chunked.status_code == 413
    assert api.asample(sample_body(sampler, 0)).status_code == 200


def test_internal_errors_are_500_json_and_logged(
    fresh_server: Callable[..., LocalServer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api = RawApi(fresh_server())

    def boom(self: Engine) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Engine, "capabilities", boom)
    with caplog.at_level(logging.ERROR, logger="tinkex.server"):
        response = api.get("get_server_capabilities")
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert any("secret internals" in str(record.exc_info) for record in caplog.records)
    assert api.get("healthz").status_code == 200


def test_model_failure_fails_only_that_request(
    fresh_server: Callable[..., LocalServer], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api = RawApi(fresh_server())
    sampler = api.sampler()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ZeroDivisionError("model bug")

    with monkeypatch.context() as patch, caplog.at_level(logging.ERROR, logger="tinkex.server"):
        patch.setattr(EchoModel, "start", broken)
        request_id = api.asample(sample_body(sampler, 0)).json()["request_id"]
    failed = api.retrieve(request_id).json()
    assert failed["category"] == "server" and "ZeroDivisionError" in failed["error"]
    assert "model bug" not in failed["error"]
    assert api.result(api.asample(sample_body(sampler, 1)).json()["request_id"]).status_code == 200


def test_server_keeps_serving_after_a_barrage(api: RawApi) -> None:
    sampler = api.sampler()
    for _, make, _ in CASES:
        api.asample(make(sampler))
    api.http.post(api.base + "asample", data=b"\xff\xfe garbage", headers=api.headers())
    good = api.asample(sample_body(sampler, 99)).json()["request_id"]
    assert api.result(good).status_code == 200
