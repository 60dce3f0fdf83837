"""The wire codecs at their edges: JSON encoding of what cannot be encoded, the result bounds a
request sets on its JSON answer, and protobuf tensors of odd sizes, bfloat16 and half-sent parts."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from tinkex._wire import codec
from tinkex._wire.bounds import ResultBounds
from tinkex._wire.proto import decode_sample_response
from tinkex.errors import DecodeError, ValidationError

# ---------------------------------------------------------------------------------------------
# JSON encoding


def test_a_value_nested_too_deeply_is_a_validation_error() -> None:
    value: Any = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(ValidationError, match="nested too deeply"):
        codec.dumps(value)


@pytest.mark.parametrize("value, path", [
    ({"a": {"b": 1.0}, "c": math.nan}, "c"),
    ({"a": [1.0, 2.0], "b": [math.inf]}, "b[0]"),
    ([{"x": 1}, (0.5, -math.inf)], "[1][1]"),
])
def test_the_first_non_finite_number_is_named_after_finite_containers(value: Any, path: str) -> None:
    with pytest.raises(ValidationError) as caught:
        codec.dumps(value)
    assert caught.value.field == path


# ---------------------------------------------------------------------------------------------
# Result bounds of a JSON answer

REQUEST = {"num_samples": 1, "sampling_params": {"max_tokens": 2},
           "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]}}


def test_a_prompt_with_a_chunk_of_unknown_size_leaves_the_prompt_rows_unbounded() -> None:
    image = {"type": "image", "data": "eA==", "format": "png"}
    bounds = ResultBounds.for_request({**REQUEST, "prompt": {"chunks": [{"tokens": [1]}, image]}})
    assert bounds.max_prompt_rows is None
    sized = ResultBounds.for_request({**REQUEST, "prompt": {"chunks": [{"tokens": [1]}, {**image,
                                                                                       "expected_tokens": 3}]}})
    assert sized.max_prompt_rows == 5


@pytest.mark.parametrize("answer, field", [
    ({"sequences": [{"tokens": [1]}, {"tokens": [2]}]}, "sample result.sequences"),
    ({"sequences": [{"tokens": [1, 2, 3]}]}, "sample result.sequences[].tokens"),
    ({"sequences": [], "prompt_logprobs": [None, -1.0, -2.0, -3.0]}, "sample result.prompt_logprobs"),
])
def test_a_json_answer_larger_than_the_request_can_produce_is_refused(answer: Any, field: str) -> None:
    body = codec.dumps(answer)
    with pytest.raises(DecodeError, match=r"more than the request can produce") as caught:
        codec.decode_sample_result(body, "application/json", ResultBounds.for_request(REQUEST))
    assert str(caught.value).startswith(field + ":")


def test_entries_that_are_not_sequences_are_left_to_the_decoder() -> None:
    body = codec.dumps({"sequences": ["not a sequence"]})
    ResultBounds.for_request(REQUEST).check_json_result({"sequences": ["not a sequence"]}, "r")  # counted, no error
    with pytest.raises(DecodeError, match="SampledSequence"):
        codec.decode_sample_result(body, "application/json", ResultBounds.for_request(REQUEST))


# ---------------------------------------------------------------------------------------------
# Protobuf tensors


def _field(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


def _tensor(payload: bytes, dtype: int, shape: bytes) -> bytes:
    return _field(1, payload) + bytes([3 << 3, dtype]) + _field(4, shape)


def test_bfloat16_tensors_widen_to_float32() -> None:
    halves = struct.pack("<2H", 0x3F80, 0xC040)  # the high halves of 1.0 and -3.0
    target = _tensor(halves, 4, b"\x01\x02")
    tensor = decode_sample_response(_field(5, target)).target_prompt_logprobs
    assert tensor is not None
    assert (tensor.dtype, tensor.data, tensor.shape) == ("float32", [1.0, -3.0], [1, 2])


def test_a_tensor_payload_of_partial_values_is_a_decode_error() -> None:
    target = _tensor(b"\x00\x00\x80", 1, b"\x01\x01")  # 3 bytes of float32
    with pytest.raises(DecodeError, match="3 bytes is not a whole number of 4-byte values"):
        decode_sample_response(_field(5, target))


def test_prompt_alt_tokens_need_both_tokens_and_logprobs() -> None:
    tokens = _tensor(struct.pack("<2i", 7, 8), 3, b"\x01\x02")
    with pytest.raises(DecodeError, match="needs both tokens and logprobs"):
        decode_sample_response(_field(6, _field(1, tokens)))
