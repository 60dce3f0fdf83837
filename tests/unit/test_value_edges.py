"""The value types at their edges: what prompt chunks, tensors, poller bodies, sampling values and
status errors reject or fall back to, and the generic JSON wire helpers they are built on."""

from __future__ import annotations

import sys
from typing import Any, Optional

import attrs
import pytest

from tinkex.errors import BadRequestError, DecodeError, RequestFailedError, ValidationError
from tinkex.types import (
    EncodedTextChunk,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    TensorData,
    _arrays,
)
from tinkex.types._poller import FutureCompletion, RetrieveFuturesRequest
from tinkex.types._sampling import decode_topk_rows
from tinkex.types._wire import decode_list, decode_object, fields_to_json, get_field, optional_float_list, to_wire

# ---------------------------------------------------------------------------------------------
# ModelInput and its chunks


@pytest.mark.parametrize("tokens, message", [
    ("abc", "must be a list of ints"),
    (7, "must be a list of ints"),
    ([1, "2"], "must hold ints"),
    ([1, True], "must hold ints"),
    ([1, -2], "must be non-negative"),
])
def test_text_chunks_reject_tokens_that_are_not_non_negative_ints(tokens: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EncodedTextChunk(tokens=tokens)


def test_text_chunks_take_any_iterable_of_ints() -> None:
    assert EncodedTextChunk(tokens=range(3)).tokens == [0, 1, 2]


@pytest.mark.parametrize("make", [
    lambda: ImageChunk(data=b"x", format="gif"),
    lambda: ImageAssetPointerChunk(format="webp", location="s3://b/k"),
])
def test_images_must_be_png_or_jpeg(make: Any) -> None:
    with pytest.raises(ValidationError, match="'png' or 'jpeg'"):
        make()


@pytest.mark.parametrize("expected_tokens", [-1, 1.5, True, "4"])
def test_image_expected_tokens_must_be_a_non_negative_int(expected_tokens: Any) -> None:
    with pytest.raises(ValidationError, match="expected_tokens must be a non-negative int"):
        ImageChunk(data=b"x", format="png", expected_tokens=expected_tokens)


def test_an_image_has_a_length_only_with_expected_tokens() -> None:
    assert ImageChunk(data=b"x", format="png", expected_tokens=5).length == 5
    assert ImageAssetPointerChunk(format="jpeg", location="s3://b/k", expected_tokens=0).length == 0
    for chunk in (ImageChunk(data=b"x", format="png"), ImageAssetPointerChunk(format="jpeg", location="s3://b/k")):
        with pytest.raises(ValidationError, match="needs expected_tokens"):
            _ = chunk.length
        assert "expected_tokens" not in chunk.to_json()
    with pytest.raises(ValidationError, match="needs expected_tokens"):
        _ = ModelInput(chunks=[EncodedTextChunk(tokens=[1]), ImageChunk(data=b"x", format="png")]).length


def test_model_input_rejects_what_is_not_a_list_of_chunks() -> None:
    with pytest.raises(ValidationError, match="must be a list of chunks"):
        ModelInput(chunks="abc")
    with pytest.raises(ValidationError, match="not a ModelInput chunk"):
        ModelInput(chunks=[{"type": "encoded_text", "tokens": [1]}])


def test_to_ints_refuses_an_input_with_an_image() -> None:
    prompt = ModelInput.from_ints([1]).append(ImageChunk(data=b"x", format="png", expected_tokens=2))
    with pytest.raises(ValidationError, match="non-text chunk"):
        prompt.to_ints()


def test_append_int_extends_the_last_text_chunk_or_starts_one() -> None:
    assert ModelInput.from_ints([1, 2]).append_int(3).chunks == [EncodedTextChunk(tokens=[1, 2, 3])]
    image = ImageAssetPointerChunk(format="png", location="s3://b/k", expected_tokens=1)
    assert ModelInput(chunks=[image]).append_int(4).chunks == [image, EncodedTextChunk(tokens=[4])]
    assert ModelInput.empty().append_int(9).to_ints() == [9]


# ---------------------------------------------------------------------------------------------
# TensorData


@pytest.mark.parametrize("body, message", [
    ({"data": [1, True], "dtype": "int64"}, "data must be a list of numbers"),
    ({"data": [1], "dtype": "int64", "shape": [1.0]}, "shape must be a list of ints"),
    ({"data": [1], "dtype": "int64", "shape": "1"}, "shape must be a list of ints"),
    ({"data": [1], "dtype": "bfloat16"}, "dtype must be one of"),
])
def test_tensor_json_with_wrong_types_is_a_decode_error(body: Any, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        TensorData.from_json(body)


@pytest.mark.parametrize("tensor, message", [
    (TensorData(data=[1], dtype="int32"), "dtype must be one of"),
    (TensorData(data=[], dtype="int64", shape=[-1, 0]), "must not be negative"),
    (TensorData(data=[1, 2, 3], dtype="int64", shape=[2, 2]), "needs 4 values, got 3"),
    (TensorData(data=[1], dtype="int64", shape=[1], sparse_crow_indices=[0, 1], sparse_col_indices=[0]),
     "needs a 2-D shape"),
    (TensorData(data=[1], dtype="int64", shape=[1, 2], sparse_crow_indices=[0, 1]), "both index lists"),
    (TensorData(data=[1], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1], sparse_col_indices=[0]),
     "must rise from 0 to len"),
    (TensorData(data=[1, 2], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 2, 1], sparse_col_indices=[0, 1]),
     "must rise from 0 to len"),
    (TensorData(data=[1], dtype="int64", shape=[1, 2], sparse_crow_indices=[0, 1], sparse_col_indices=[2]),
     r"one column in \[0, 2\)"),
    (TensorData(data=[1], dtype="int64", shape=[1, 2], sparse_crow_indices=[0, 1], sparse_col_indices=[0, 1]),
     r"one column in \[0, 2\)"),
])
def test_tensor_check_names_what_disagrees(tensor: TensorData, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        tensor.check("target_prompt_logprobs")
    assert "target_prompt_logprobs" in str(caught.value)


def test_a_consistent_sparse_tensor_passes_check() -> None:
    TensorData(data=[5, 8], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1, 2],
               sparse_col_indices=[0, 1]).check("t")


# ---------------------------------------------------------------------------------------------
# retrieve_futures bodies


def test_retrieve_futures_request_needs_string_request_ids() -> None:
    body = {"target": {"sampling_session_id": "s"}, "retrieved_request_ids": ["r1", 2]}
    with pytest.raises(DecodeError, match="retrieved_request_ids must be a list of strings"):
        RetrieveFuturesRequest.from_json(body)


@pytest.mark.parametrize("body", [
    {"target": {"sampling_session_id": "s"}, "timeout": True},
    {"target": {"sampling_session_id": "s"}, "prev_cursor": False},
    {"target": {"sampling_session_id": "s", "cloned_sampler_id": True}},
])
def test_retrieve_futures_request_rejects_booleans_for_numbers(body: Any) -> None:
    with pytest.raises(DecodeError, match="wrong type"):
        RetrieveFuturesRequest.from_json(body)


def test_a_completion_is_finished_only_in_the_finished_state() -> None:
    assert FutureCompletion.from_json({"state": "finished", "request_id": "r"}).is_finished
    assert not FutureCompletion.from_json({"state": "failed", "request_id": "r"}).is_finished


# ---------------------------------------------------------------------------------------------
# Sampling values


def test_topk_prompt_logprobs_must_be_non_negative() -> None:
    with pytest.raises(ValidationError, match="topk_prompt_logprobs"):
        SampleRequest(prompt=ModelInput.from_ints([1]), sampling_params=SamplingParams(), topk_prompt_logprobs=-1)


def test_topk_entries_decode_from_pairs_or_objects() -> None:
    rows = decode_topk_rows([None, [[5, -0.5], {"token_id": 6, "logprob": -1}]], "topk")
    assert rows == [None, [(5, -0.5), (6, -1.0)]]
    with pytest.raises(DecodeError, match="Invalid topk logprob entry"):
        decode_topk_rows([[{"token_id": 6}]], "topk")


def test_sequence_topk_logprobs_decode_from_json() -> None:
    sequence = SampledSequence.from_json({"tokens": [5], "topk_logprobs": [[[5, -0.25]]]})
    assert sequence.topk_logprobs == [[(5, -0.25)]]
    assert SampledSequence.from_json(sequence.to_json()) == sequence


def test_with_no_sequence_ids_the_response_is_unchanged() -> None:
    response = SampleResponse(sequences=[SampledSequence(tokens=[1])])
    assert response.with_sequence_ids([]) is response
    assert response.with_sequence_ids(["r:seq:0"]).sequences[0].sequence_id == "r:seq:0"


def test_numpy_helpers_say_how_to_get_numpy_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` raise ImportError
    with pytest.raises(ImportError, match="pip install numpy"):
        _arrays.numpy()


# ---------------------------------------------------------------------------------------------
# The generic wire helpers


@attrs.frozen
class _Plain:
    """An attrs value without its own to_json, with a field kept off the wire and one not decoded."""

    name: str = attrs.field(metadata={"kind": str})
    count: Optional[int] = attrs.field(default=None, metadata={"kind": int})
    local: str = attrs.field(default="here", metadata={"wire": False})
    kind: str = attrs.field(default="plain", init=False, metadata={"kind": str})


def test_attrs_values_without_to_json_encode_field_by_field() -> None:
    assert to_wire([_Plain(name="a")]) == [{"name": "a", "kind": "plain"}]
    assert fields_to_json(_Plain(name="a", count=2, local="x")) == {"name": "a", "count": 2, "kind": "plain"}


def test_decode_object_skips_fields_not_on_the_wire_or_not_in_init() -> None:
    decoded = decode_object(_Plain, {"name": "a", "count": 3, "local": "sent anyway", "kind": "other"})
    assert decoded == _Plain(name="a", count=3)
    with pytest.raises(DecodeError, match="field 'count' has the wrong type"):
        decode_object(_Plain, {"name": "a", "count": True})


def test_get_field_accepts_ints_for_floats_and_booleans_only_when_asked() -> None:
    assert get_field({"x": 1}, "x", "T", float) == 1
    assert get_field({"x": True}, "x", "T", (bool, int)) is True
    with pytest.raises(DecodeError, match="wrong type"):
        get_field({"x": True}, "x", "T", float)


def test_list_helpers_reject_what_is_not_a_list_of_numbers() -> None:
    with pytest.raises(DecodeError, match="expected a list, got dict"):
        decode_list({}, "rows", int)
    with pytest.raises(DecodeError, match="expected a list of numbers"):
        optional_float_list("1.0", "logprobs")
    with pytest.raises(DecodeError, match="expected numbers or null, got bool"):
        optional_float_list([1.0, True], "logprobs")
    assert optional_float_list([1, None, -0.5], "logprobs") == [1.0, None, -0.5]


# ---------------------------------------------------------------------------------------------
# Status errors


@pytest.mark.parametrize("body, detail", [
    ("", None),
    ("   ", None),
    ("plain text from a proxy", "plain text from a proxy"),
    ('["a", "list"]', '["a", "list"]'),
    ('{"detail": {"message": "nested"}}', "nested"),
    ('{"detail": [{"msg": "field required"}, {"loc": ["x"]}, "raw"]}', "field required; raw"),
    ('{"error": "quota exceeded"}', "quota exceeded"),
    ('{"message": "  spaced  "}', "spaced"),
    ('{"detail": "", "other": 1}', '{"detail": "", "other": 1}'),
])
def test_status_error_detail_reads_the_servers_explanation(body: str, detail: Optional[str]) -> None:
    assert BadRequestError("Error code: 400", status_code=400, body=body).detail == detail


def test_only_user_category_failures_are_user_errors() -> None:
    assert RequestFailedError("bad prompt", category="user").is_user_error
    assert not RequestFailedError("worker died", category="server").is_user_error
    assert not RequestFailedError("?").is_user_error
