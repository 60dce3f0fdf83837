"""Every route of the local server answers as protocol.md sections 4 and 9 say, over real HTTP."""

from __future__ import annotations

import base64
import json
from typing import Any, Callable

from tests.with_server.conftest import PROTOBUF, RawApi, sample_body
from tinkex._wire.proto import decode_sample_response
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL, load_model
from tinkex.types import ClientConfig, DynamicConfig, SamplingParams, ServerCapabilities


def test_client_config_has_every_flag_with_sdk_defaults(api: RawApi) -> None:
    flags = api.ok("client/config", {"sdk_version": "0.38.0"})
    assert ClientConfig.from_json(flags) == ClientConfig()
    assert flags["sample_max_concurrent_requests"] == 2000


def test_client_and_dynamic_config_are_configurable(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(
        client_config={"sample_max_concurrent_requests": 8, "sample_use_retrieve_futures": True, "custom_flag": 1},
        dynamic_config={"sample_cancel_enabled": True},
    )
    api = RawApi(server)
    flags = api.ok("client/config", {"sdk_version": "0.38.0"})
    assert flags["sample_max_concurrent_requests"] == 8
    assert flags["sample_use_retrieve_futures"] is True
    assert flags["custom_flag"] == 1
    dynamic = DynamicConfig.from_json(api.ok("client/dynamic_config", {"sdk_version": "0.38.0"}))
    assert dynamic.sample_cancel_enabled is True
    assert dynamic.sample_cancel_max_batch_size == 64


def test_healthz_and_capabilities(api: RawApi) -> None:
    assert api.get("healthz").json() == {"status": "ok"}
    capabilities = ServerCapabilities.from_json(api.get("get_server_capabilities").json())
    by_name = {model.model_name: model for model in capabilities.supported_models}
    assert set(by_name) == {DEFAULT_MODEL, ECHO_MODEL}
    for model in by_name.values():
        assert model.tokenizer_id == "tinkex/byte"
        assert model.sampleable is True
        assert model.max_context_length is not None and model.max_context_length > 0


def test_session_lifecycle_heartbeat_finish(api: RawApi) -> None:
    session_id = api.session()
    assert api.ok("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"}) is not None
    finish = {"reason": {"type": "success"}, "detail": None}
    assert api.post(f"sessions/{session_id}/finish", finish).status_code == 200
    assert api.post(f"sessions/{session_id}/finish", finish).status_code == 200  # idempotent
    beat = api.post("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"})
    assert beat.status_code == 410
    assert "finished" in beat.json()["detail"]


def test_sampling_session_ids_and_sampler_info(api: RawApi) -> None:
    session_id = api.session()
    first = api.sampler(DEFAULT_MODEL, session_id, seq=0)
    second = api.sampler(ECHO_MODEL, session_id, seq=1)
    assert (first, second) == (f"{session_id}:sample:0", f"{session_id}:sample:1")
    assert api.sampler(DEFAULT_MODEL, session_id, seq=0) == first  # the same seq is the same sampler
    info = api.get(f"samplers/{first}").json()
    assert info == {"sampler_id": first, "base_model": DEFAULT_MODEL, "model_path": None, "tokenizer_id": "tinkex/byte"}


def test_sampling_session_from_model_path(api: RawApi) -> None:
    body = {"session_id": api.session(), "sampling_session_seq_id": 0, "model_path": f"tinker://{ECHO_MODEL}",
            "type": "create_sampling_session"}  # fmt: skip
    sampler = api.ok("create_sampling_session", body)["sampling_session_id"]
    assert api.get(f"samplers/{sampler}").json()["model_path"] == f"tinker://{ECHO_MODEL}"


def test_asample_promise_and_protobuf_result(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    body = sample_body(sampler, 0, num_samples=2, sampling_params={"max_tokens": 5, "seed": 42, "stop": ["\n\n"]})
    promise = api.asample(body).json()
    request_id = promise["request_id"]
    assert promise["sample_sequence_ids"] == [f"{request_id}:seq:0", f"{request_id}:seq:1"]
    assert promise["model_id"] == DEFAULT_MODEL
    answer = api.result(request_id)
    assert answer.headers["Content-Type"].startswith(PROTOBUF)
    result = decode_sample_response(answer.content)
    expected = load_model(DEFAULT_MODEL).sample(list(b"Hello"), SamplingParams(max_tokens=5, seed=42, stop=["\n\n"]), 2)
    assert [seq.tokens for seq in result.sequences] == [seq.tokens for seq in expected]
    assert [seq.logprobs for seq in result.sequences] == [seq.logprobs for seq in expected]  # float32 both ways


def test_legacy_json_result_matches_protobuf(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    body = sample_body(sampler, 0, prompt_logprobs=True, topk_prompt_logprobs=2)
    request_id = api.asample(body).json()["request_id"]
    proto = decode_sample_response(api.result(request_id).content)
    legacy = api.result(request_id, protobuf=False)
    assert legacy.headers["Content-Type"].startswith("application/json")
    data = legacy.json()
    assert data["type"] == "sample"
    assert data["sequences"][0]["tokens"] == proto.sequences[0].tokens
    assert data["sequences"][0]["sequence_id"] == f"{request_id}:seq:0"
    assert data["prompt_logprobs"][0] is None
    assert data["prompt_logprobs"] == proto.prompt_logprobs
    assert [[tuple(cell) for cell in row] if row else None for row in data["topk_prompt_logprobs"]] == (
        proto.topk_prompt_logprobs
    )


def test_compute_logprobs_request_shape(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    tokens = list(b"The cat")
    body = sample_body(sampler, 0, tokens, prompt_logprobs=True,
                       sampling_params={"max_tokens": 1, "seed": None, "temperature": 1.0})  # fmt: skip
    result = decode_sample_response(api.result(api.asample(body).json()["request_id"]).content)
    assert result.prompt_logprobs == load_model(DEFAULT_MODEL).prompt_logprobs(tokens)
    assert len(result.sequences[0].tokens) == 1


def test_topk_sample_logprobs_and_last_n(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    body = sample_body(sampler, 0, prompt_logprobs=True, topk_sample_logprobs=3, prompt_logprobs_last_n=2)
    result = decode_sample_response(api.result(api.asample(body).json()["request_id"]).content)
    sequence = result.sequences[0]
    assert sequence.topk_logprobs is not None and len(sequence.topk_logprobs) == len(sequence.tokens)
    assert all(row is not None and len(row) == 3 for row in sequence.topk_logprobs)
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs[:3] == [None, None, None] and None not in result.prompt_logprobs[3:]


def test_complete_metadata_for_large_results(fresh_server: Callable[..., LocalServer]) -> None:
    api = RawApi(fresh_server(metadata_threshold_bytes=16))
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    metadata = api.retrieve(request_id, allow_metadata_only=True).json()
    assert metadata["status"] == "complete_metadata"
    full = api.retrieve(request_id, allow_metadata_only=False)
    assert full.headers["Content-Type"].startswith(PROTOBUF)
    assert metadata["response_payload_size"] == len(full.content)


def test_small_results_skip_metadata(api: RawApi) -> None:
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    answer = api.retrieve(request_id, allow_metadata_only=True)
    assert answer.headers["Content-Type"].startswith(PROTOBUF)


def test_result_stays_retrievable_after_delivery(api: RawApi) -> None:
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    first = api.result(request_id).content
    assert api.result(request_id).content == first


def test_join_sampling_session_counts_clients(api: RawApi) -> None:
    sampler = api.sampler()
    counters = [api.ok("join_sampling_session", {"sampling_session_id": sampler, "type": "join_sampling_session"})
                ["client_counter"] for _ in range(3)]  # fmt: skip
    assert counters == [1, 2, 3]


def test_telemetry_is_accepted(api: RawApi) -> None:
    event = {"event": "SESSION_START", "event_id": "x", "event_session_index": 0, "severity": "INFO",
             "timestamp": "2026-11-25T13:56:29.679672Z"}  # fmt: skip
    body = {"events": [event], "platform": "Linux", "sdk_version": "0.38.0", "session_id": "sessionless-1",
            "process_uuid": "p"}  # fmt: skip
    assert api.ok("telemetry", body) == {"status": "accepted"}


def test_cancel_future_of_finished_request_is_harmless(api: RawApi) -> None:
    request_id = api.asample(sample_body(api.sampler(), 0)).json()["request_id"]
    assert api.post("cancel_future", {"request_id": request_id}).status_code == 200
    assert api.result(request_id).status_code == 200


def test_retrieve_futures_poller_mode(api: RawApi) -> None:
    sampler = api.sampler()
    request_id = api.asample(sample_body(sampler, 0)).json()["request_id"]
    target = {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": 0}
    poll = api.ok("retrieve_futures", {"target": target, "prev_cursor": 0, "retrieved_request_ids": []})
    assert poll["cursor"] == 1
    (completion,) = poll["completions"]
    assert completion["state"] == "finished" and completion["request_id"] == request_id
    answer = api.retrieve(request_id)
    assert completion["response_payload_uncompressed_size"] == len(answer.content)
    ack = api.ok("retrieve_futures", {"target": target, "prev_cursor": 1, "timeout": 0.0, "retrieved_request_ids": []})
    assert ack == {"completions": [], "cursor": 1}
    clone = {**target, "cloned_sampler_id": 1}
    api.asample(sample_body(sampler, 1_000_000_000))
    other = api.ok("retrieve_futures", {"target": clone, "prev_cursor": 0, "retrieved_request_ids": [request_id]})
    assert [c["state"] for c in other["completions"]] == ["finished"]


def _jwt_claims(token: str) -> Any:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def test_jwt_exchange(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(jwt_enabled=True, jwt_ttl_s=600)
    api = RawApi(server)
    assert api.ok("client/config", {})["pjwt_auth_enabled"] is True
    token = api.ok("auth/token", {})["jwt"]
    assert token.startswith("eyJ") and token.count(".") == 2
    claims = _jwt_claims(token)
    assert claims["exp"] - claims["iat"] == 600
    assert server.api_key not in token
    jwt_api = RawApi(server, key=token)
    session_id = jwt_api.session()
    assert api.ok("session_heartbeat", {"session_id": session_id, "type": "session_heartbeat"})  # same principal
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    refused = RawApi(server, key=forged).post("session_heartbeat", {"session_id": session_id})
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
