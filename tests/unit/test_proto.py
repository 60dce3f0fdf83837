"""The protobuf SampleResponse codec: golden bytes of protocol 6.3, decoding rules, malformed input,
and a cross-check against the official ``protobuf`` library on generated messages."""

from __future__ import annotations

import math
import struct
from typing import Any, List, Optional

import pytest
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import (
    PbSampleResponse,
    damaged_messages,
    property_settings,
    protobuf_messages,
    sample_responses,
)
from tinkex._wire import proto as _proto
from tinkex._wire.proto import decode_sample_response, encode_sample_response
from tinkex.errors import DecodeError, ValidationError
from tinkex.types import PromptAltTokens, SampledSequence, SampleResponse, StopReason, TensorData

PAD = (0, -99999.0)
NAN_BYTES = bytes.fromhex("0000c07f")


def f32(value: float) -> float:
    """``value`` rounded to float32, as it comes back from the wire."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def annotated(text: str) -> bytes:
    """Bytes from a hex dump whose lines may carry ``#`` comments."""
    return bytes.fromhex("".join(line.split("#")[0] for line in text.splitlines()))


# ---------------------------------------------------------------------------------------------
# Golden bytes (protocol 6.3)

COMPUTE_LOGPROBS = annotated(
    """
    0a 0e                      # field 1 (sequences), 14 bytes
       08 01                   # stop_reason = LENGTH
       12 04 24 00 00 00       # tokens = [36]
       1a 04 00 00 00 bf       # logprobs = [-0.5]
    12 14                      # field 2 (prompt_logprobs), 5 x float32
       00 00 c0 7f cd cc 8c bf 9a 99 99 bf 66 66 a6 bf 33 33 b3 bf
    """
)
COMPUTE_LOGPROBS_VALUE = SampleResponse(
    sequences=[SampledSequence(tokens=[36], logprobs=[-0.5], stop_reason=StopReason.LENGTH)],
    prompt_logprobs=[None, f32(-1.1), f32(-1.2), f32(-1.3), f32(-1.4)],
)

TOPK = annotated(
    """
    1a 38                      # field 3 (topk_prompt_logprobs), 56 bytes
       0a 18                   # token_ids
          00 00 00 00  00 00 00 00
          66 00 00 00  07 00 00 00
          67 00 00 00  00 00 00 00
       12 18                   # logprobs
          80 4f c3 c7  80 4f c3 c7
          cd cc 8c bf  00 00 00 c0
          00 00 00 bf  80 4f c3 c7
       18 02                   # k = 2
       20 03                   # length = 3
    """
)
TOPK_VALUE = SampleResponse(sequences=[], topk_prompt_logprobs=[None, [(102, f32(-1.1)), (7, -2.0)], [(103, -0.5)]])

TWO_SEQUENCE_TOKENS = ([453, 460, 467, 474, 481], [484, 491, 498, 505, 512])
TWO_SEQUENCE_LOGPROBS = [-0.5, -1.0, -1.5, -2.0, -2.5]


def _two_sequences_bytes() -> bytes:
    out = b""
    for tokens in TWO_SEQUENCE_TOKENS:
        body = b"\x08\x01" + b"\x12\x14" + struct.pack("<5i", *tokens)
        body += b"\x1a\x14" + struct.pack("<5f", *TWO_SEQUENCE_LOGPROBS)
        out += b"\x0a" + bytes([len(body)]) + body
    return out


TWO_SEQUENCES_VALUE = SampleResponse(
    sequences=[
        SampledSequence(tokens=list(tokens), logprobs=TWO_SEQUENCE_LOGPROBS, stop_reason=StopReason.LENGTH)
        for tokens in TWO_SEQUENCE_TOKENS
    ]
)

GOLDEN = [
    pytest.param(COMPUTE_LOGPROBS, COMPUTE_LOGPROBS_VALUE, 38, id="compute_logprobs"),
    pytest.param(TOPK, TOPK_VALUE, 58, id="topk_prompt_logprobs"),
    pytest.param(_two_sequences_bytes(), TWO_SEQUENCES_VALUE, 96, id="two_sequences"),
]


@pytest.mark.parametrize(("data", "value", "size"), GOLDEN)
def test_golden_bytes_encode_exactly(data: bytes, value: SampleResponse, size: int) -> None:
    assert len(data) == size
    assert encode_sample_response(value) == data


@pytest.mark.parametrize(("data", "value", "size"), GOLDEN)
def test_golden_bytes_decode(data: bytes, value: SampleResponse, size: int) -> None:
    assert decode_sample_response(data) == value


def test_compute_logprobs_arrive_float32_rounded() -> None:
    result = decode_sample_response(COMPUTE_LOGPROBS)
    assert result.prompt_logprobs is not None
    assert result.prompt_logprobs[:2] == [None, -1.100000023841858]
    assert result.prompt_logprobs[4] == -1.399999976158142


def test_prompt_logprob_none_encodes_as_nan_bytes() -> None:
    data = encode_sample_response(SampleResponse(sequences=[], prompt_logprobs=[None, -0.5, None]))
    assert data == b"\x12\x0c" + NAN_BYTES + struct.pack("<f", -0.5) + NAN_BYTES


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    assert decode_sample_response(bytearray(COMPUTE_LOGPROBS)) == COMPUTE_LOGPROBS_VALUE
    assert decode_sample_response(memoryview(b"xx" + COMPUTE_LOGPROBS)[2:]) == COMPUTE_LOGPROBS_VALUE


# ---------------------------------------------------------------------------------------------
# Decoding rules (protocol 6.2)


def test_proto3_defaults_are_absent_fields() -> None:
    stop_sequence = b"\x0a\x06\x12\x04" + struct.pack("<i", 7)
    result = decode_sample_response(stop_sequence)
    assert result == SampleResponse(sequences=[SampledSequence(tokens=[7], stop_reason=StopReason.STOP)])
    assert result.prompt_cache_hit_tokens == 0
    assert decode_sample_response(b"") == SampleResponse(sequences=[])
    assert encode_sample_response(SampleResponse(sequences=[SampledSequence(tokens=[7])])) == stop_sequence


def test_prompt_cache_hit_tokens() -> None:
    assert decode_sample_response(b"\x20\x05").prompt_cache_hit_tokens == 5
    negative = encode_sample_response(SampleResponse(sequences=[], prompt_cache_hit_tokens=-2))
    assert negative == b"\x20" + b"\xfe" + b"\xff" * 8 + b"\x01"  # int32 sign-extended to ten bytes
    assert decode_sample_response(negative).prompt_cache_hit_tokens == -2


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\x0a\x02\x1a\x00", id="empty sequence logprobs"),
        pytest.param(b"\x12\x00", id="empty prompt_logprobs"),
        pytest.param(b"\x1a\x00", id="empty topk message"),
        pytest.param(b"\x1a\x0c\x0a\x04\x01\x00\x00\x00\x12\x04\x00\x00\x00\xbf", id="topk without k/length"),
        pytest.param(b"\x1a\x02\x18\x00", id="topk k=0"),
        pytest.param(b"\x1a\x04\x18\x02\x20\x00", id="topk length=0"),
    ],
)
def test_empty_or_absent_arrays_decode_to_none(data: bytes) -> None:
    result = decode_sample_response(data)
    assert result.prompt_logprobs is None
    assert result.topk_prompt_logprobs is None
    assert all(seq.logprobs is None for seq in result.sequences)


def test_nan_anywhere_in_prompt_logprobs_is_none() -> None:
    nans = ["0000c07f", "0000c0ff", "0100807f", "ffffff7f"]  # quiet, negative, signalling, all-ones
    data = b"\x12\x14" + b"".join(bytes.fromhex(n) for n in nans) + struct.pack("<f", -1.0)
    assert decode_sample_response(data).prompt_logprobs == [None, None, None, None, -1.0]


def _topk_message(rows: List[List[tuple]], k: int) -> bytes:
    """Field 3 of SampleResponse holding ``rows`` (each exactly k cells; small enough for 1-byte lengths)."""
    ids = b"".join(struct.pack("<i", cell[0]) for row in rows for cell in row)
    lps = b"".join(struct.pack("<f", cell[1]) for row in rows for cell in row)
    body = b"\x0a" + bytes([len(ids)]) + ids + b"\x12" + bytes([len(lps)]) + lps
    body += b"\x18" + bytes([k]) + b"\x20" + bytes([len(rows)])
    assert len(body) < 0x80
    return b"\x1a" + bytes([len(body)]) + body


def test_topk_padding_rules() -> None:
    rows = [
        [PAD, (5, -1.0), (6, -2.0)],  # first cell padding: the whole row is None
        [(5, -1.0), PAD, PAD],  # trailing padding trimmed
        [(5, -1.0), PAD, (6, -2.0)],  # padding inside a row is kept (only trailing cells are trimmed)
        [(0, -1.0), (9, -99999.0), (0, -99999.5)],  # padding only when both token and logprob match
    ]
    result = decode_sample_response(_topk_message(rows, 3)).topk_prompt_logprobs
    assert result == [
        None,
        [(5, -1.0)],
        [(5, -1.0), PAD, (6, -2.0)],
        [(0, -1.0), (9, -99999.0), (0, -99999.5)],
    ]


def test_encoder_pads_topk_rows_and_keeps_all_none_tables() -> None:
    value = SampleResponse(sequences=[], topk_prompt_logprobs=[None, None])
    data = encode_sample_response(value)
    assert data == _topk_message([[PAD], [PAD]], 1)
    assert decode_sample_response(data) == value


def test_sequence_topk_sampled_logprobs_decode() -> None:
    seq = SampledSequence(tokens=[3, 4], topk_logprobs=[[(3, -0.5), (8, -1.5)], [(4, -0.25)]])
    data = encode_sample_response(SampleResponse(sequences=[seq]))
    assert decode_sample_response(data).sequences == [seq]


def test_repeated_topk_messages_merge_field_by_field() -> None:
    # protobuf merges a repeated embedded message: k and length may arrive in a second copy.
    first = _topk_message([[(5, -1.0)]], 1)[2:-4]  # the arrays only
    data = b"\x1a" + bytes([len(first)]) + first + b"\x1a\x04\x18\x01\x20\x01"
    assert decode_sample_response(data).topk_prompt_logprobs == [[(5, -1.0)]]


def test_last_prompt_logprobs_field_wins() -> None:
    data = b"\x12\x04" + struct.pack("<f", -1.0) + b"\x12\x04" + struct.pack("<f", -2.0)
    assert decode_sample_response(data).prompt_logprobs == [-2.0]


UNKNOWN_FIELDS = annotated(
    """
    78 2a                      # field 15 varint
    81 01 0102030405060708     # field 16 fixed64
    8a 01 03 616263            # field 17 length-delimited
    95 01 01020304             # field 18 fixed32
    """
)


def test_unknown_fields_of_every_skippable_wire_type_are_skipped() -> None:
    seq = b"\x08\x01" + UNKNOWN_FIELDS + b"\x12\x04" + struct.pack("<i", 9)
    topk = _topk_message([[(5, -1.0)]], 1)
    topk = b"\x1a" + bytes([topk[1] + len(UNKNOWN_FIELDS)]) + UNKNOWN_FIELDS + topk[2:]
    tensor = b"\x2a\x0a\x0a\x04" + struct.pack("<f", -0.5) + b"\x18\x01" + UNKNOWN_FIELDS[:2]  # field 5
    data = UNKNOWN_FIELDS + b"\x0a" + bytes([len(seq)]) + seq + topk + tensor + UNKNOWN_FIELDS
    assert decode_sample_response(data) == SampleResponse(
        sequences=[SampledSequence(tokens=[9], stop_reason=StopReason.LENGTH)],
        topk_prompt_logprobs=[[(5, -1.0)]],
        target_prompt_logprobs=TensorData(data=[-0.5], dtype="float32", shape=[1]),
    )


def _tensor(payload: bytes, dtype: int, shape: bytes) -> bytes:
    return b"\x0a" + bytes([len(payload)]) + payload + b"\x18" + bytes([dtype]) + b"\x22" + bytes([len(shape)]) + shape


def test_the_0_38_tensor_fields_decode_dense_sparse_and_alt_tokens() -> None:
    """Fields 5 (target_prompt_logprobs) and 6 (prompt_alt_tokens) as the official SDK reads them:
    dense and CSR tensors, int32 widened to int64, shapes as packed varints."""
    dense = _tensor(struct.pack("<2f", -0.25, -2.0), 1, b"\x01\x02")
    csr_body = (b"\x0a\x04" + struct.pack("<f", -1.5) + b"\x12\x18" + struct.pack("<3q", 0, 1, 1)
                + b"\x1a\x08" + struct.pack("<q", 1))
    sparse = b"\x12" + bytes([len(csr_body)]) + csr_body + b"\x18\x01\x22\x02\x02\x02"
    alt = (b"\x0a" + bytes([len(t := _tensor(struct.pack("<2i", 7, 8), 3, b"\x01\x02"))]) + t
           + b"\x12" + bytes([len(lp := _tensor(struct.pack("<2f", -0.5, -1.0), 1, b"\x01\x02"))]) + lp)
    for target, expected in [
        (dense, TensorData(data=[-0.25, -2.0], dtype="float32", shape=[1, 2])),
        (sparse, TensorData(data=[-1.5], dtype="float32", shape=[2, 2], sparse_crow_indices=[0, 1, 1],
                            sparse_col_indices=[1])),
    ]:
        data = b"\x2a" + bytes([len(target)]) + target + b"\x32" + bytes([len(alt)]) + alt
        response = decode_sample_response(data)
        assert response.target_prompt_logprobs == expected
        assert response.prompt_alt_tokens == PromptAltTokens(
            tokens=TensorData(data=[7, 8], dtype="int64", shape=[1, 2]),
            logprobs=TensorData(data=[-0.5, -1.0], dtype="float32", shape=[1, 2]))
    assert decode_sample_response(b"\x2a" + bytes([len(sparse)]) + sparse).target_prompt_logprobs.rows() == [
        [0, -1.5], [0, 0]]


def test_a_tensor_of_an_unknown_dtype_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="unsupported tensor dtype 9"):
        decode_sample_response(b"\x2a\x02\x18\x09")


# ---------------------------------------------------------------------------------------------
# Malformed input: DecodeError with the byte offset


MALFORMED = [
    pytest.param(b"\x0a", 1, "truncated varint", id="length missing"),
    pytest.param(b"\x0a\x05\x08", 0, "runs past the end", id="length past the end"),
    pytest.param(b"\x20" + b"\xff" * 10 + b"\x01", 1, "longer than 10 bytes", id="11-byte varint"),
    pytest.param(b"\x20\xff\xff", 1, "truncated varint", id="truncated varint value"),
    pytest.param(b"\x08\x01", 0, "wire type varint", id="sequences as varint"),
    pytest.param(b"\x10\x01", 0, "prompt_logprobs", id="prompt_logprobs as varint"),
    pytest.param(b"\x1d\x00\x00\x00\x00", 0, "topk_prompt_logprobs", id="topk as fixed32"),
    pytest.param(b"\x22\x00", 0, "prompt_cache_hit_tokens", id="cache hits as bytes"),
    pytest.param(b"\x28\x00", 0, "field 5", id="target_prompt_logprobs as varint"),
    pytest.param(b"\x0a\x02\x0a\x00", 2, "stop_reason", id="stop_reason as bytes"),
    pytest.param(b"\x0a\x02\x10\x01", 2, "tokens", id="tokens as varint"),
    pytest.param(b"\x0a\x02\x18\x01", 2, "logprobs", id="logprobs as varint"),
    pytest.param(b"\x0a\x02\x20\x01", 2, "topk_sampled_logprobs", id="sequence topk as varint"),
    pytest.param(b"\x1a\x02\x08\x01", 2, "token_ids", id="topk token_ids as varint"),
    pytest.param(b"\x1a\x02\x10\x01", 2, "logprobs", id="topk logprobs as varint"),
    pytest.param(b"\x1a\x02\x1a\x00", 2, "TopkLogprobs.k", id="topk k as bytes"),
    pytest.param(b"\x1a\x02\x22\x00", 2, "TopkLogprobs.length", id="topk length as bytes"),
    pytest.param(b"\x0a\x05\x12\x03\x01\x02\x03", 4, "not a whole number", id="tokens of 3 bytes"),
    pytest.param(b"\x0a\x04\x1a\x02\x01\x02", 4, "not a whole number", id="logprobs of 2 bytes"),
    pytest.param(b"\x12\x05\x00\x00\x00\x00\x00", 2, "not a whole number", id="prompt_logprobs of 5 bytes"),
    pytest.param(b"\x0a\x02\x08\x02", 2, "StopReason 2", id="stop reason 2"),
    pytest.param(b"\x0a\x0b\x08" + b"\xff" * 9 + b"\x01", 2, "StopReason -1", id="stop reason -1"),
    pytest.param(b"\x1a\x04\x18\x02\x20\x01", 2, "0 token ids", id="topk arrays missing"),
    pytest.param(_topk_message([[(1, -1.0)], [(2, -2.0)]], 1)[:-1] + b"\x03", 2, "k=1 x length=3", id="topk size"),
    pytest.param(b"\x1a\x0c\x18\xff\xff\xff\xff\x0f\x20\xff\xff\xff\xff\x0f", 2, "k=4294967295", id="huge k"),
    pytest.param(b"\x00\x00", 0, "field number 0", id="field 0"),
    pytest.param(b"\x7b", 0, "wire type 3", id="group start"),
    pytest.param(b"\x7c", 0, "wire type 4", id="group end"),
    pytest.param(b"\x7e", 0, "wire type 6", id="wire type 6"),
    pytest.param(b"\x7f", 0, "wire type 7", id="wire type 7"),
    pytest.param(b"\x7d\x00\x00", 0, "truncated fixed-width", id="truncated fixed32"),
    pytest.param(b"\x79\x00\x00\x00\x00", 0, "truncated fixed-width", id="truncated fixed64"),
    pytest.param(b"\x0a\x03\x0a\x05\x00", 2, "runs past the end of its message (5)", id="nested length past end"),
]


@pytest.mark.parametrize(("data", "offset", "message"), MALFORMED)
def test_malformed_input_raises_decode_error_with_offset(data: bytes, offset: int, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_sample_response(data)
    assert info.value.offset == offset
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "field", "bad"),
    [
        (SampleResponse(sequences=[SampledSequence(tokens=[2**31])]), "tokens", 2**31),
        (SampleResponse(sequences=[SampledSequence(tokens=[1], logprobs=["x"])]), "logprobs", "x"),  # type: ignore[list-item]
        (SampleResponse(sequences=[SampledSequence(tokens=[1], stop_reason="eos")]), "stop_reason", "eos"),  # type: ignore[arg-type]
        (SampleResponse(sequences=[], topk_prompt_logprobs=[[(-(2**40), -1.0)]]),
         "topk_prompt_logprobs.token_ids", -(2**40)),
    ],
)  # fmt: skip
def test_encoder_rejects_values_that_do_not_fit(value: SampleResponse, field: str, bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        encode_sample_response(value)
    assert (info.value.field, info.value.value) == (field, bad)


def test_big_endian_hosts_swap_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a little-endian host, pretending to be big-endian swaps every element: the swap runs.
    monkeypatch.setattr(_proto, "_BIG_ENDIAN_HOST", True)
    swapped = decode_sample_response(COMPUTE_LOGPROBS)
    assert swapped.sequences[0].tokens == [0x24000000]
    assert encode_sample_response(swapped) == COMPUTE_LOGPROBS


# ---------------------------------------------------------------------------------------------
# Round trips and the cross-check against the official protobuf library


@property_settings(300)
@given(sample_responses())
def test_round_trip(value: SampleResponse) -> None:
    assert decode_sample_response(encode_sample_response(value)) == value


# The test's own reading of a parsed protobuf message, written independently of tinkex._wire.proto.


class Invalid(Exception):
    """The message parses as protobuf but breaks a rule of protocol 6.2."""


def _words(data: bytes, code: str) -> list:
    if len(data) % 4:
        raise Invalid("array length")
    return list(struct.unpack(f"<{len(data) // 4}{code}", data))


def _expected_topk(message: Any, present: bool) -> Optional[list]:
    if not present or message.k == 0 or message.length == 0:
        return None
    ids, lps = _words(message.token_ids, "i"), _words(message.logprobs, "f")
    if not len(ids) == len(lps) == message.k * message.length:
        raise Invalid("top-k size")
    rows: list = []
    for start in range(0, len(ids), message.k):
        cells = list(zip(ids[start : start + message.k], lps[start : start + message.k]))
        if cells[0] == PAD:
            rows.append(None)
            continue
        while cells[-1] == PAD:
            cells.pop()
        rows.append(cells)
    return rows


_TENSOR_CODES = {1: ("float32", "f"), 2: ("int64", "q"), 3: ("int64", "i"), 4: ("float32", "H")}


def _tensor_words(data: bytes, code: str) -> list:
    size = struct.calcsize(code)
    if len(data) % size:
        raise Invalid("tensor bytes")
    values = list(struct.unpack(f"<{len(data) // size}{code}", data))
    if code == "H":
        return [struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in values]
    return values


def _expected_tensor(tensor: Any) -> TensorData:
    """Protocol 6.1's Tensor as tinkex holds it (INT32 widened to int64, BFLOAT16 to float32)."""
    if tensor.dtype not in _TENSOR_CODES:
        raise Invalid("tensor dtype")
    name, code = _TENSOR_CODES[tensor.dtype]
    shape = list(tensor.shape)
    if tensor.WhichOneof("data") == "sparse_csr":
        csr = tensor.sparse_csr
        return TensorData(data=_tensor_words(csr.values, code), dtype=name, shape=shape,
                          sparse_crow_indices=_tensor_words(csr.crow_indices, "q"),
                          sparse_col_indices=_tensor_words(csr.col_indices, "q"))
    data = _tensor_words(tensor.dense, code)
    return TensorData(data=data, dtype=name, shape=shape or [len(data)])


def _expected_extras(message: Any) -> dict:
    out: dict = {}
    if message.HasField("target_prompt_logprobs"):
        out["target_prompt_logprobs"] = _expected_tensor(message.target_prompt_logprobs)
    if message.HasField("prompt_alt_tokens"):
        alt = message.prompt_alt_tokens
        if not (alt.HasField("tokens") and alt.HasField("logprobs")):
            raise Invalid("prompt_alt_tokens parts")
        out["prompt_alt_tokens"] = PromptAltTokens(tokens=_expected_tensor(alt.tokens),
                                                   logprobs=_expected_tensor(alt.logprobs))
    return out


def _expected(message: Any) -> SampleResponse:
    sequences = []
    for seq in message.sequences:
        if seq.stop_reason not in (0, 1):
            raise Invalid("stop reason")
        sequences.append(
            SampledSequence(
                tokens=_words(seq.tokens, "i"),
                logprobs=_words(seq.logprobs, "f") or None,
                stop_reason=StopReason.LENGTH if seq.stop_reason == 1 else StopReason.STOP,
                topk_logprobs=_expected_topk(seq.topk_sampled_logprobs, seq.HasField("topk_sampled_logprobs")),
            )
        )
    prompt = [None if math.isnan(x) else x for x in _words(message.prompt_logprobs, "f")]
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=prompt or None,
        topk_prompt_logprobs=_expected_topk(message.topk_prompt_logprobs, message.HasField("topk_prompt_logprobs")),
        prompt_cache_hit_tokens=message.prompt_cache_hit_tokens,
        **_expected_extras(message),
    )


def _to_protobuf(value: SampleResponse) -> Any:
    """Build the protobuf message for a value the way protocol 6.2 describes it."""
    message = PbSampleResponse()
    for seq in value.sequences:
        entry = message.sequences.add(stop_reason=1 if seq.stop_reason is StopReason.LENGTH else 0)
        entry.tokens = struct.pack(f"<{len(seq.tokens)}i", *seq.tokens)
        if seq.logprobs:
            entry.logprobs = struct.pack(f"<{len(seq.logprobs)}f", *seq.logprobs)
        if seq.topk_logprobs:
            _fill_topk(entry.topk_sampled_logprobs, seq.topk_logprobs)
    if value.prompt_logprobs:
        floats = [math.nan if x is None else x for x in value.prompt_logprobs]
        message.prompt_logprobs = struct.pack(f"<{len(floats)}f", *floats)
    if value.topk_prompt_logprobs:
        _fill_topk(message.topk_prompt_logprobs, value.topk_prompt_logprobs)
    message.prompt_cache_hit_tokens = value.prompt_cache_hit_tokens
    return message


def _fill_topk(message: Any, rows: list) -> None:
    k = max([len(row) for row in rows if row] + [1])
    cells = [cell for row in rows for cell in (list(row or []) + [PAD] * (k - len(row or [])))]
    message.token_ids = struct.pack(f"<{len(cells)}i", *(cell[0] for cell in cells))
    message.logprobs = struct.pack(f"<{len(cells)}f", *(cell[1] for cell in cells))
    message.k, message.length = k, len(rows)


@property_settings(1000)
@given(sample_responses())
def test_our_encoding_is_what_protobuf_writes_and_reads(value: SampleResponse) -> None:
    ours = encode_sample_response(value)
    expected = _to_protobuf(value)
    assert ours == expected.SerializeToString(deterministic=True)
    assert PbSampleResponse.FromString(ours) == expected


def _same(decoded: SampleResponse, expected: SampleResponse) -> None:
    # NaN sequence logprobs never compare equal: compare their float32 bit patterns instead.
    def bits(values: Optional[list]) -> Optional[bytes]:
        return None if values is None else struct.pack(f"<{len(values)}f", *values)

    assert [bits(s.logprobs) for s in decoded.sequences] == [bits(s.logprobs) for s in expected.sequences]
    strip = [SampledSequence(s.tokens, None, s.stop_reason, None, s.topk_logprobs) for s in decoded.sequences]
    want = [SampledSequence(s.tokens, None, s.stop_reason, None, s.topk_logprobs) for s in expected.sequences]
    assert strip == want
    assert decoded.prompt_logprobs == expected.prompt_logprobs
    assert decoded.topk_prompt_logprobs == expected.topk_prompt_logprobs
    assert decoded.prompt_cache_hit_tokens == expected.prompt_cache_hit_tokens
    assert _tensor_bits(decoded.target_prompt_logprobs) == _tensor_bits(expected.target_prompt_logprobs)
    alts = [(_tensor_bits(r.prompt_alt_tokens.tokens), _tensor_bits(r.prompt_alt_tokens.logprobs))
            if r.prompt_alt_tokens is not None else None for r in (decoded, expected)]
    assert alts[0] == alts[1]


def _tensor_bits(tensor: Optional[TensorData]) -> Any:
    """A tensor with its numbers as bit patterns, so NaN cells compare equal."""
    if tensor is None:
        return None
    return (tensor.dtype, tensor.shape, tensor.sparse_crow_indices, tensor.sparse_col_indices,
            [struct.pack("<d", value) for value in tensor.data])


@property_settings(1000)
@given(protobuf_messages())
def test_protobuf_written_messages_decode(message: Any) -> None:
    data = message.SerializeToString()
    try:
        expected = _expected(message)
    except Invalid:
        with pytest.raises(DecodeError):
            decode_sample_response(data)
        return
    _same(decode_sample_response(data), expected)


# ---------------------------------------------------------------------------------------------
# Fuzzing: arbitrary and damaged bytes raise DecodeError or decode


def _decode_or_decode_error(data: bytes) -> Optional[SampleResponse]:
    try:
        return decode_sample_response(data)
    except DecodeError as exc:
        assert isinstance(exc.offset, int) and 0 <= exc.offset <= len(data)
        return None


@property_settings(1000)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    _decode_or_decode_error(data)


def _has_mistyped_or_group_fields(message: Any) -> bool:
    """True when protobuf kept a known field number as unknown (wrong wire type) or saw a group."""
    if any(field.field_number <= 6 or field.wire_type in (3, 4) for field in UnknownFieldSet(message)):
        return True
    topk = [message.topk_prompt_logprobs] + [seq.topk_sampled_logprobs for seq in message.sequences]
    alt = message.prompt_alt_tokens
    tensors = [message.target_prompt_logprobs, alt.tokens, alt.logprobs]
    nested = list(message.sequences) + topk + [alt] + tensors + [tensor.sparse_csr for tensor in tensors]
    return any(field.field_number <= 4 or field.wire_type in (3, 4) for m in nested for field in UnknownFieldSet(m))


@property_settings(1000)
@given(damaged_messages())
def test_damaged_messages_raise_decode_error_or_agree_with_protobuf(data: bytes) -> None:
    decoded = _decode_or_decode_error(data)
    try:
        message = PbSampleResponse.FromString(data)
        expected = _expected(message)
    except Exception:  # protobuf refused it, or protocol 6.2 does: tinkex need only not crash
        return
    if _has_mistyped_or_group_fields(message):
        return  # protobuf keeps a mistyped known field as unknown; tinkex calls it malformed
    assert decoded is not None, "protobuf and protocol 6.2 accept this message"
    _same(decoded, expected)
