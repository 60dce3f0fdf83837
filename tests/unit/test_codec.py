"""The JSON codec (protocol 2.3) and the protobuf/JSON choice for sample results."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import property_settings, sample_responses
from tinkex._wire.codec import decode_sample_result, dumps, loads
from tinkex._wire.proto import encode_sample_response
from tinkex.errors import DecodeError, ValidationError
from tinkex.types import SampledSequence, SampleResponse, SamplingParams, StopReason

# ---------------------------------------------------------------------------------------------
# dumps


def test_dumps_is_compact_utf8_without_ascii_escapes() -> None:
    assert dumps({"a": [1, 2.5, None, True], "b": "é\n☃"}) == '{"a":[1,2.5,null,true],"b":"é\\n☃"}'.encode()


def test_dumps_sampling_params_default_matches_the_spec() -> None:
    assert dumps(SamplingParams().to_json()) == b'{"temperature":1.0,"top_k":-1,"top_p":1.0}'


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"sampling_params": {"temperature": math.nan}}, "sampling_params.temperature"),
        ({"logprobs": [0.0, -math.inf]}, "logprobs[1]"),
        ([{"x": math.inf}], "[0].x"),
        (math.nan, "value"),
    ],
)
def test_dumps_refuses_nan_and_infinity_naming_where(value: Any, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        dumps(value)
    assert info.value.field == field
    assert field in str(info.value)
    assert math.isnan(info.value.value) or math.isinf(info.value.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"x": object()}, "not JSON serializable"),
        ({"x": {1, 2}}, "not JSON serializable"),
        ("\ud800", "not encodable as UTF-8"),
    ],
)
def test_dumps_refuses_what_json_cannot_hold(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        dumps(value)


def test_dumps_refuses_a_circular_structure() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(ValidationError, match="Circular reference"):
        dumps(loop)


# ---------------------------------------------------------------------------------------------
# loads

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@property_settings(300)
@given(_json_values)
def test_loads_inverts_dumps(value: Any) -> None:
    data = dumps(value)
    assert loads(data, what="test") == value
    assert loads(data.decode("utf-8"), what="test") == value


@pytest.mark.parametrize("data", [b'{"a":1}', bytearray(b'{"a":1}'), memoryview(b'{"a":1}'), '{"a":1}'])
def test_loads_accepts_bytes_and_text(data: Any) -> None:
    assert loads(data, what="test") == {"a": 1}


def test_loads_error_names_what_and_gives_the_byte_offset() -> None:
    data = '{"é":1,'.encode()  # é is two bytes, so the byte offset differs from the character offset
    with pytest.raises(DecodeError) as info:
        loads(data, what="asample promise")
    assert info.value.offset == len(data)
    assert str(info.value).startswith("asample promise: invalid JSON")
    with pytest.raises(DecodeError) as text_info:
        loads(data.decode(), what="asample promise")
    assert text_info.value.offset == len(data.decode())


def test_loads_error_quotes_a_capped_excerpt_of_a_huge_body() -> None:
    body = b'{"data":"' + b"x" * 50_000_000 + b'",}'
    with pytest.raises(DecodeError) as info:
        loads(body, what="sample result")
    assert info.value.offset == len(body) - 1
    assert len(str(info.value)) < 400
    assert str(info.value).endswith("xx\",}'")


def test_loads_rejects_invalid_utf8_at_its_offset() -> None:
    with pytest.raises(DecodeError) as info:
        loads(b'{"a":"\xff"}', what="error body")
    assert info.value.offset == 6
    assert "invalid UTF-8" in str(info.value)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_loads_rejects_non_standard_constants(constant: str) -> None:
    with pytest.raises(DecodeError, match=constant):
        loads(f'{{"x":{constant}}}', what="test")


def test_loads_survives_deep_nesting() -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        loads(b"[" * 200_000 + b"]" * 200_000, what="test")


@pytest.mark.parametrize("data", [b"", b"   ", b"[1,", b"{'a': 1}", b"\xef\xbb\xbf{}", b"1 2"])
def test_loads_raises_decode_error_for_invalid_json(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        loads(data, what="test")
    assert str(info.value).startswith("test: ")


# ---------------------------------------------------------------------------------------------
# decode_sample_result

LEGACY_JSON = (
    b'{"type":"sample","sequences":[{"stop_reason":"length","tokens":[453,460],"logprobs":[-0.5,-1.0]}],'
    b'"prompt_logprobs":[null,-1.1],"topk_prompt_logprobs":[null,[[102,-1.1],[103,-3.0]]],'
    b'"prompt_cache_hit_tokens":0}'
)


def test_legacy_json_result_of_the_spec_decodes() -> None:
    result = decode_sample_result(LEGACY_JSON, "application/json")
    assert result == SampleResponse(
        sequences=[SampledSequence(tokens=[453, 460], logprobs=[-0.5, -1.0], stop_reason=StopReason.LENGTH)],
        prompt_logprobs=[None, -1.1],
        topk_prompt_logprobs=[None, [(102, -1.1), (103, -3.0)]],
    )


@pytest.mark.parametrize(
    "content_type",
    ["application/x-protobuf", "Application/X-Protobuf; charset=binary", "x, application/x-protobuf"],
)
def test_protobuf_content_types_decode_as_protobuf(content_type: str) -> None:
    value = SampleResponse(sequences=[SampledSequence(tokens=[1, 2], stop_reason=StopReason.LENGTH)])
    assert decode_sample_result(encode_sample_response(value), content_type) == value


@pytest.mark.parametrize("content_type", [None, "", "application/json", "text/plain", "application/protobuf"])
def test_other_content_types_decode_as_json(content_type: Any) -> None:
    assert decode_sample_result(LEGACY_JSON, content_type).sequences[0].tokens == [453, 460]


def test_mismatched_bodies_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_sample_result(LEGACY_JSON, "application/x-protobuf")
    with pytest.raises(DecodeError, match="sample result"):
        decode_sample_result(encode_sample_response(SampleResponse(sequences=[])) + b"\x08", "application/json")
    with pytest.raises(DecodeError, match="sequences"):
        decode_sample_result(b'{"type":"sample"}', "application/json")


@property_settings(300)
@given(sample_responses(sequence_topk=False))
def test_protobuf_and_json_give_equal_results(value: SampleResponse) -> None:
    from_protobuf = decode_sample_result(encode_sample_response(value), "application/x-protobuf")
    from_json = decode_sample_result(dumps(value.to_json()), "application/json")
    assert from_protobuf == from_json == value
