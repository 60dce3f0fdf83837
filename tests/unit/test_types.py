"""Value types: JSON round trips, the spec's examples byte for byte, validation and decoding
errors that name the field, unknown fields ignored, and exceptions that survive pickling."""

from __future__ import annotations

import inspect
import math
import pickle
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import (
    model_inputs,
    property_settings,
    sample_requests,
    sample_responses,
    sampled_sequences,
    sampling_params,
)
from tinkex import errors, types
from tinkex._wire.codec import dumps, loads
from tinkex.types import (
    CancelFutureRequest,
    ClientConfig,
    CompleteMetadataResponse,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    DynamicConfig,
    EncodedTextChunk,
    FinishSessionRequest,
    FutureCompletion,
    FutureRetrieveRequest,
    GetSamplerResponse,
    ImageChunk,
    JoinSamplingSessionRequest,
    JoinSamplingSessionResponse,
    ModelInput,
    PromptAltTokens,
    QueueState,
    RequestErrorCategory,
    RequestFailedResponse,
    RetrieveFuturesRequest,
    RetrieveFuturesResponse,
    SampledSequence,
    SamplePromise,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    SamplingSessionTarget,
    ServerCapabilities,
    SessionHeartbeatRequest,
    StopReason,
    SupportedModel,
    TensorData,
    TryAgainResponse,
)


def through_the_wire(value: Any) -> Any:
    """Encode ``value`` as compact JSON bytes and decode it back with its class's ``from_json``."""
    return type(value).from_json(loads(dumps(value.to_json()), what=type(value).__name__))


# ---------------------------------------------------------------------------------------------
# Round trips

GENERATED: Dict[type, Any] = {
    ModelInput: model_inputs(),
    SamplingParams: sampling_params,
    SampleRequest: sample_requests,
    # The legacy JSON form carries sequence_id but not a sequence's top-k table.
    SampledSequence: sampled_sequences(with_topk=False, with_sequence_id=True),
    SampleResponse: sample_responses(sequence_topk=False, sequence_ids=True),
}


@pytest.mark.parametrize("cls", list(GENERATED), ids=lambda cls: cls.__name__)
def test_generated_values_round_trip(cls: type) -> None:
    @property_settings(150)
    @given(GENERATED[cls])
    def check(value: Any) -> None:
        assert through_the_wire(value) == value

    check()


EXAMPLES: List[Any] = [
    SamplePromise(request_id="r1"),
    SamplePromise(request_id="r1", model_id="m", sample_sequence_ids=["r1:seq:0", "r1:seq:1"]),
    TryAgainResponse(request_id="r1"),
    TryAgainResponse(request_id="r1", queue_state=QueueState.PAUSED_CAPACITY, queue_state_reason="busy"),
    RequestFailedResponse(error="boom"),
    RequestFailedResponse(error="bad prompt", category=RequestErrorCategory.USER),
    CompleteMetadataResponse(response_payload_size=96),
    CreateSessionRequest(),
    CreateSessionRequest(
        tags=["a"], user_metadata={"k": [1, None]}, sdk_version="0.38.0", project_id="p", display_name="run"
    ),  # fmt: skip
    CreateSessionResponse(session_id="s"),
    CreateSessionResponse(session_id="s", info_message="i", warning_message="w", error_message="e"),
    SessionHeartbeatRequest(session_id="s"),
    CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=0, base_model="b"),
    CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=3, model_path="tinker://x"),
    CreateSamplingSessionResponse(sampling_session_id="s:sample:0"),
    GetSamplerResponse(sampler_id="s:sample:0", base_model="b"),
    GetSamplerResponse(sampler_id="s:sample:0", base_model="b", model_path="tinker://x", tokenizer_id="t"),
    FutureRetrieveRequest(request_id="r1"),
    FutureRetrieveRequest(request_id="r1", allow_metadata_only=False),
    JoinSamplingSessionRequest(sampling_session_id="s:sample:0"),
    JoinSamplingSessionResponse(client_counter=1),
    CancelFutureRequest(request_id="r1"),
    FinishSessionRequest(),
    FinishSessionRequest(reason="errored", detail="it broke"),
    ClientConfig(),
    ClientConfig(
        pjwt_auth_enabled=True, sample_max_concurrent_requests=5, billing_exception_max_pause_duration_sec=1.5
    ),
    DynamicConfig(),
    DynamicConfig(refresh_interval_sec=12.5, sample_cancel_enabled=True, sample_cancel_max_batch_size=8),
    SupportedModel(model_name="m"),
    SupportedModel(model_name="m", max_context_length=4096, trainable=False, sampleable=True, tokenizer_id="t"),
    ServerCapabilities(),
    ServerCapabilities(supported_models=[SupportedModel(model_name="m")]),
    CreateSessionResponse(session_id="s", type="create_session"),
    SamplingSessionTarget(sampling_session_id="s:sample:0", cloned_sampler_id=2),
    RetrieveFuturesRequest(target=SamplingSessionTarget(sampling_session_id="s:sample:0")),
    RetrieveFuturesRequest(
        target=SamplingSessionTarget(sampling_session_id="s:sample:0", cloned_sampler_id=1), prev_cursor=3,
        timeout=0.0, retrieved_request_ids=["r1", "r2"],
    ),  # fmt: skip
    FutureCompletion(state="failed", request_id="r1"),
    FutureCompletion(state="finished", request_id="r1", response_payload_uncompressed_size=96),
    RetrieveFuturesResponse(),
    RetrieveFuturesResponse(completions=[FutureCompletion(state="finished", request_id="r1")], cursor=1),
    TensorData(data=[5, -1, 7, 8], dtype="int64", shape=[2, 2]),
    TensorData(data=[0.5], dtype="float32", shape=[2, 2], sparse_crow_indices=[0, 1, 1], sparse_col_indices=[1]),
    PromptAltTokens(tokens=TensorData(data=[3, 4], dtype="int64", shape=[1, 2]),
                    logprobs=TensorData(data=[-1.5, -2.0], dtype="float32", shape=[1, 2])),  # fmt: skip
    SampleResponse(
        sequences=[SampledSequence(tokens=[1], stop_reason=StopReason.LENGTH)],
        target_prompt_logprobs=TensorData(data=[-0.25, 0.0], dtype="float32", shape=[1, 2]),
        prompt_alt_tokens=PromptAltTokens(tokens=TensorData(data=[3], dtype="int64", shape=[1, 1]),
                                          logprobs=TensorData(data=[-1.5], dtype="float32", shape=[1, 1])),
    ),  # fmt: skip
]


@pytest.mark.parametrize("value", EXAMPLES, ids=lambda value: type(value).__name__)
def test_examples_round_trip(value: Any) -> None:
    assert through_the_wire(value) == value


def test_every_decodable_type_has_a_round_trip_test() -> None:
    covered = set(GENERATED) | {type(value) for value in EXAMPLES}
    decodable = {obj for obj in vars(types).values() if inspect.isclass(obj) and hasattr(obj, "from_json")}
    assert decodable - covered == set()


@pytest.mark.parametrize("value", [*EXAMPLES, ModelInput.from_ints([1]), SamplingParams(seed=1)], ids=repr)
def test_unknown_fields_are_ignored(value: Any) -> None:
    data = dict(value.to_json(), zz_new_field={"nested": [1, 2]}, another=None)
    assert type(value).from_json(data) == value


def test_unknown_fields_are_ignored_in_nested_values() -> None:
    data = {
        "sequences": [{"tokens": [1], "stop_reason": "length", "extra": 1}],
        "prompt_logprobs": None,
        "future_field": "x",
    }
    assert SampleResponse.from_json(data) == SampleResponse(
        sequences=[SampledSequence(tokens=[1], stop_reason=StopReason.LENGTH)]
    )


# ---------------------------------------------------------------------------------------------
# The spec's examples, byte for byte as compact JSON

SPEC_EXAMPLES = [
    pytest.param(
        SampleRequest(
            prompt=ModelInput.from_ints([101, 102, 103, 104]),
            sampling_params=SamplingParams(max_tokens=5, seed=42, stop=["\n\n"], temperature=0.7, top_k=50, top_p=0.9),
            num_samples=2,
            sampling_session_id="<ssid>",
            seq_id=0,
        ),
        b'{"num_samples":2,"prompt":{"chunks":[{"tokens":[101,102,103,104],"type":"encoded_text"}]},'
        b'"sampling_params":{"max_tokens":5,"seed":42,"stop":["\\n\\n"],"temperature":0.7,"top_k":50,"top_p":0.9},'
        b'"sampling_session_id":"<ssid>","seq_id":0,"prompt_logprobs":false,"topk_prompt_logprobs":0,'
        b'"topk_sample_logprobs":0,"prompt_alt_tokens_k":0,"record_stability_info":false,"type":"sample"}',
        id="3.2 asample body",
    ),
    pytest.param(
        SampleRequest(
            prompt=ModelInput.from_ints([1, 2, 3, 4, 5]),
            sampling_params=SamplingParams(max_tokens=1),
            sampling_session_id="<ssid>",
            seq_id=3,
            prompt_logprobs=True,
        ),
        b'{"num_samples":1,"prompt":{"chunks":[{"tokens":[1,2,3,4,5],"type":"encoded_text"}]},'
        b'"sampling_params":{"max_tokens":1,"temperature":1.0,"top_k":-1,"top_p":1.0},'
        b'"sampling_session_id":"<ssid>","seq_id":3,"prompt_logprobs":true,"topk_prompt_logprobs":0,'
        b'"topk_sample_logprobs":0,"prompt_alt_tokens_k":0,"record_stability_info":false,"type":"sample"}',
        id="3.2 compute_logprobs body",
    ),
    pytest.param(
        SamplePromise(request_id="<rid>", sample_sequence_ids=["<rid>:seq:0", "<rid>:seq:1"]),
        b'{"request_id":"<rid>","model_id":null,"sample_sequence_ids":["<rid>:seq:0","<rid>:seq:1"]}',
        id="3.2 promise",
    ),
    pytest.param(
        FutureRetrieveRequest(request_id="<rid>"),
        b'{"request_id":"<rid>","allow_metadata_only":true}',
        id="3.2 retrieve_future",
    ),
    pytest.param(FinishSessionRequest(), b'{"reason":{"type":"success"},"detail":null}', id="3.3 finish"),
    pytest.param(
        DynamicConfig(refresh_interval_sec=300, sample_cancel_enabled=True, sample_cancel_max_batch_size=64),
        b'{"refresh_interval_sec":300,"sample_cancel_enabled":true,"sample_cancel_max_batch_size":64}',
        id="4.2 dynamic_config",
    ),
    pytest.param(
        CreateSessionRequest(
            tags=["a", "b"],
            user_metadata={"experiment": "e1"},
            sdk_version="0.38.0",
            project_id="proj-1",
            display_name="my run",
        ),
        b'{"tags":["a","b"],"user_metadata":{"experiment":"e1"},"sdk_version":"0.38.0","project_id":"proj-1",'
        b'"display_name":"my run","type":"create_session"}',
        id="4.4 create_session",
    ),  # fmt: skip
    pytest.param(
        CompleteMetadataResponse(response_payload_size=96),
        b'{"status":"complete_metadata","response_payload_size":96}',
        id="4.9 complete_metadata",
    ),
    pytest.param(SamplingParams(), b'{"temperature":1.0,"top_k":-1,"top_p":1.0}', id="5.1 defaults"),
    pytest.param(SamplingParams(stop="x"), b'{"stop":"x","temperature":1.0,"top_k":-1,"top_p":1.0}', id="5.1 stop str"),
    pytest.param(
        SamplingParams(stop=[7, 8]), b'{"stop":[7,8],"temperature":1.0,"top_k":-1,"top_p":1.0}', id="5.1 stop ids"
    ),
    pytest.param(
        ModelInput(chunks=[EncodedTextChunk(tokens=[1, 2]), ImageChunk(data=b"ab", format="png", expected_tokens=4)]),
        b'{"chunks":[{"tokens":[1,2],"type":"encoded_text"},{"data":"YWI=","format":"png","expected_tokens":4,'
        b'"type":"image"}]}',
        id="5.2 mixed ModelInput",
    ),
]


@pytest.mark.parametrize(("value", "wire"), SPEC_EXAMPLES)
def test_spec_examples_encode_byte_for_byte(value: Any, wire: bytes) -> None:
    assert dumps(value.to_json()) == wire


@pytest.mark.parametrize(("value", "wire"), SPEC_EXAMPLES)
def test_spec_examples_decode(value: Any, wire: bytes) -> None:
    assert type(value).from_json(loads(wire, what="spec example")) == value


@pytest.mark.parametrize(
    ("cls", "wire", "expected"),
    [
        (
            TryAgainResponse,
            b'{"type":"try_again","request_id":"<rid>","queue_state":"paused_capacity","queue_state_reason":"x"}',
            TryAgainResponse(request_id="<rid>", queue_state=QueueState.PAUSED_CAPACITY, queue_state_reason="x"),
        ),
        (TryAgainResponse, b'{"type":"try_again","request_id":"r","queue_state":"new"}', TryAgainResponse("r")),
        (RequestFailedResponse, b'{"error":"m","category":"user"}',
         RequestFailedResponse("m", RequestErrorCategory.USER)),
        (RequestFailedResponse, b'{"error":"m","category":"weird"}', RequestFailedResponse("m")),
        (JoinSamplingSessionResponse, b'{"client_counter":1}', JoinSamplingSessionResponse(client_counter=1)),
        (DynamicConfig, b"{}", DynamicConfig()),
        (ClientConfig, b"{}", ClientConfig()),
        (CreateSessionResponse, b'{"session_id":"s","type":"create_session"}',
         CreateSessionResponse("s", type="create_session")),
        (
            ServerCapabilities,
            b'{"supported_models":[{"model_name":"m","max_context_length":8,"trainable":false,"sampleable":true}]}',
            ServerCapabilities([SupportedModel("m", max_context_length=8, trainable=False, sampleable=True)]),
        ),
    ],
)  # fmt: skip
def test_spec_answers_decode(cls: Any, wire: bytes, expected: Any) -> None:
    assert cls.from_json(loads(wire, what=cls.__name__)) == expected


# ---------------------------------------------------------------------------------------------
# Validation and decoding errors name the field

BAD_PARAMS = [
    ("temperature", -0.5),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "hot"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", math.nan),
    ("top_k", 0),
    ("top_k", -2),
    ("top_k", 1.5),
    ("top_k", True),
    ("max_tokens", -1),
    ("max_tokens", 2.0),
    ("seed", "7"),
    ("stop", 5),
    ("stop", ["a", 1]),
    ("stop", [-1]),
]


@pytest.mark.parametrize(("field", "bad"), BAD_PARAMS, ids=[f"{f}={v!r}" for f, v in BAD_PARAMS])
def test_sampling_params_validation_names_field_and_value(field: str, bad: Any) -> None:
    with pytest.raises(errors.ValidationError) as info:
        SamplingParams(**{field: bad})
    assert info.value.field == field
    assert field in str(info.value)
    assert repr(bad) in str(info.value) or (isinstance(bad, list) and str(bad[-1]) in str(info.value))


MISSING: List[Any] = [
    (ModelInput, {}, "chunks"),
    (ModelInput, {"chunks": [{"type": "encoded_text"}]}, "tokens"),
    (SampleRequest, {"sampling_params": {}}, "prompt"),
    (SampleRequest, {"prompt": {"chunks": []}}, "sampling_params"),
    (SampledSequence, {"stop_reason": "stop"}, "tokens"),
    (SampleResponse, {"prompt_logprobs": None}, "sequences"),
    (SamplePromise, {"model_id": "m"}, "request_id"),
    (TryAgainResponse, {"type": "try_again"}, "request_id"),
    (RequestFailedResponse, {"category": "user"}, "error"),
    (CompleteMetadataResponse, {"status": "complete_metadata"}, "response_payload_size"),
    (CreateSessionResponse, {}, "session_id"),
    (SessionHeartbeatRequest, {}, "session_id"),
    (CreateSamplingSessionRequest, {"session_id": "s"}, "sampling_session_seq_id"),
    (CreateSamplingSessionResponse, {}, "sampling_session_id"),
    (GetSamplerResponse, {"sampler_id": "x"}, "base_model"),
    (FutureRetrieveRequest, {}, "request_id"),
    (JoinSamplingSessionRequest, {}, "sampling_session_id"),
    (JoinSamplingSessionResponse, {}, "client_counter"),
    (CancelFutureRequest, {}, "request_id"),
    (FinishSessionRequest, {"detail": None}, "reason"),
    (SupportedModel, {"trainable": True}, "model_name"),
]


@pytest.mark.parametrize(("cls", "data", "field"), MISSING, ids=[f"{c.__name__}.{f}" for c, _, f in MISSING])
def test_missing_required_field_names_it(cls: Any, data: dict, field: str) -> None:
    with pytest.raises(errors.DecodeError, match=f"'{field}'"):
        cls.from_json(data)


@pytest.mark.parametrize(
    ("cls", "data"),
    [
        (SamplingParams, {"temperature": "hot"}),
        (SamplingParams, {"top_p": 7}),
        (SampledSequence, {"tokens": [1], "stop_reason": "eos"}),
        (SampledSequence, {"tokens": ["1"]}),
        (SampleResponse, {"sequences": [], "topk_prompt_logprobs": [[[1]]]}),
        (SamplePromise, {"request_id": "r", "sample_sequence_ids": [1]}),
        (TryAgainResponse, {"type": "sample", "request_id": "r"}),
        (ModelInput, {"chunks": [{"type": "video"}]}),
        (ModelInput, {"chunks": [{"type": "image", "data": "!!", "format": "png"}]}),
        (ModelInput, []),
    ],
)
def test_malformed_values_raise_decode_error(cls: Any, data: Any) -> None:
    with pytest.raises(errors.DecodeError):
        cls.from_json(data)


# ---------------------------------------------------------------------------------------------
# Exceptions survive pickling with their attributes

_ATTRIBUTE_VALUES: Dict[str, Any] = {
    "status_code": 418,
    "body": '{"detail":"teapot"}',
    "request_id": "req-1",
    "retry_after": 1.5,
    "url": "http://127.0.0.1:1/api/v1/asample",
    "category": "user",
    "field": "top_p",
    "value": [2.0],
    "offset": 7,
    "fatal": True,
}
EXCEPTION_CLASSES = [
    obj for obj in vars(errors).values() if inspect.isclass(obj) and issubclass(obj, errors.TinkexError)
]


def _build(cls: Callable[..., errors.TinkexError], message: str = "") -> errors.TinkexError:
    keywords = [
        name
        for name, param in inspect.signature(cls).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return cls(message or f"{cls.__name__} happened", **{name: _ATTRIBUTE_VALUES[name] for name in keywords})


@pytest.mark.parametrize("cls", EXCEPTION_CLASSES, ids=lambda cls: cls.__name__)
def test_exceptions_pickle_with_their_attributes(cls: Any) -> None:
    error = _build(cls)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls
    assert str(copy) == str(error) == f"{cls.__name__} happened"
    assert copy.args == error.args
    assert vars(copy) == vars(error)
    keywords = set(vars(error)) - {"message"}
    assert keywords == {n for n, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY}


def test_every_exception_class_is_covered() -> None:
    exported = {getattr(errors, name) for name in errors.__all__ if inspect.isclass(getattr(errors, name))}
    assert exported == set(EXCEPTION_CLASSES)
    assert len(EXCEPTION_CLASSES) >= 19


@property_settings(100)
@given(st.sampled_from(EXCEPTION_CLASSES), st.text(max_size=40))
def test_exception_messages_survive_pickling(cls: Any, message: str) -> None:
    error = _build(cls, message or "x")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.args, vars(copy)) == (message or "x", (message or "x",), vars(error))


# ---------------------------------------------------------------------------------------------
# SSE stream chunks (protocol 9.2): the data objects the server writes and clients read


@pytest.mark.parametrize("event, data", [
    ("token", b'{"index":0,"token_id":9906,"token":"Hello","logprob":-0.12,"sequence_index":0}'),
    ("token", b'{"index":3,"token_id":7,"token":null,"logprob":null,"sequence_index":1}'),
    ("done", b'{"finish_reason":"length","total_tokens":1,"sequence_index":0}'),
    ("error", b'{"message":"request was cancelled","category":"user"}'),
])  # fmt: skip
def test_stream_chunks_round_trip_the_spec_shapes(event: str, data: bytes) -> None:
    chunk = types.SampleStreamChunk.from_event(event, loads(data, what="SSE data"))
    assert chunk.kind.value == event
    assert dumps(chunk.to_json()) == data


def test_stream_chunk_decoding_defaults_and_errors() -> None:
    done = types.SampleStreamChunk.from_event("done", {"finish_reason": "stop", "total_tokens": 2})
    assert done.sequence_index == 0 and done.finish_reason is StopReason.STOP
    odd = types.SampleStreamChunk.from_event("error", {"message": "m", "category": "weird"})
    assert odd.category is types.RequestErrorCategory.UNKNOWN
    for event, data, named in [("tick", {}, "tick"), ("done", {"finish_reason": "eos", "total_tokens": 1}, "eos"),
                               ("token", {"index": "0", "token_id": 1}, "index")]:  # fmt: skip
        with pytest.raises(errors.DecodeError, match=named):
            types.SampleStreamChunk.from_event(event, data)
