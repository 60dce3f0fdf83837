"""Hypothesis strategies for valid :mod:`tinkex.types` values, shared by every test module.

Import with ``from tests.strategies import ...`` (``tests`` is a package).
Protobuf messages come from the official ``protobuf`` library (a dev dependency) with a
schema built from protocol section 6.1; ``protobuf_messages`` includes values tinkex never
writes (negative tokens, infinities, NaN patterns, padding cells, unknown fields, tensors, and
now and then an array that breaks protocol 6.2) and ``damaged_messages`` cuts and corrupts them.

Generated floats are float32-representable and finite, so a value survives both wire forms
(protobuf and JSON) unchanged; arrays the protobuf form cannot tell apart from None (empty
``logprobs``, ``prompt_logprobs`` or top-k tables) are generated as None.

``property_settings(n)`` is the Hypothesis settings for a property test: ``n`` examples by
default (keep CI fast), more when the ``TINKEX_FUZZ_EXAMPLES`` environment variable (``make
fuzz``) asks for more; no per-example deadline (CI machines are noisy).
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any, List, Optional

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tinkex.types import (
    EncodedTextChunk,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    StopReason,
)

__all__ = [
    "budget",
    "property_settings",
    "token_ids",
    "logprobs",
    "model_inputs",
    "sampling_params",
    "sample_requests",
    "topk_rows",
    "sampled_sequences",
    "sample_responses",
    "PbSampleResponse",
    "PbSampleResponseExtra",
    "protobuf_messages",
    "damaged_messages",
]

INT32_MAX = 2**31 - 1


def budget(default: int) -> int:
    """Return ``max_examples`` for a property test: ``default`` unless ``TINKEX_FUZZ_EXAMPLES`` is larger."""
    raised = os.environ.get("TINKEX_FUZZ_EXAMPLES", "")
    return max(default, int(raised)) if raised.isdigit() else default


def property_settings(default: int) -> settings:
    """Settings for a property test running ``budget(default)`` examples."""
    return settings(max_examples=budget(default), deadline=None, suppress_health_check=[HealthCheck.too_slow])


# Small ids are the common case; the full int32 range catches width and sign bugs.
token_ids = st.one_of(st.integers(0, 300), st.integers(0, INT32_MAX))
# Real logprobs are <= 0; the range stays far from the top-k padding value -99999.0.
logprobs = st.floats(min_value=-1000.0, max_value=0.0, width=32)
_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=20)


def _token_lists(min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[List[int]]:
    return st.lists(token_ids, min_size=min_size, max_size=max_size)


_text_chunks = st.builds(EncodedTextChunk, tokens=_token_lists())
_image_chunks = st.builds(
    ImageChunk,
    data=st.binary(max_size=24),
    format=st.sampled_from(["png", "jpeg"]),
    expected_tokens=st.none() | st.integers(0, 4096),
)
_image_pointer_chunks = st.builds(
    ImageAssetPointerChunk,
    format=st.sampled_from(["png", "jpeg"]),
    location=_names,
    expected_tokens=st.none() | st.integers(0, 4096),
)


def model_inputs(text_only: bool = False) -> st.SearchStrategy[ModelInput]:
    """Prompts: mostly one text chunk; with ``text_only=False`` also image chunks."""
    chunk = _text_chunks if text_only else st.one_of(_text_chunks, _image_chunks, _image_pointer_chunks)
    return st.one_of(
        st.builds(ModelInput.from_ints, _token_lists(min_size=1)),
        st.builds(ModelInput, chunks=st.lists(chunk, max_size=4)),
    )


_stops = st.one_of(
    st.none(),
    st.text(max_size=4),
    st.lists(st.text(min_size=1, max_size=4), max_size=3),
    st.lists(st.integers(0, INT32_MAX), max_size=3),
)

sampling_params = st.builds(
    SamplingParams,
    max_tokens=st.none() | st.integers(0, 4096),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    stop=_stops,
    temperature=st.floats(min_value=0.0, max_value=4.0),
    top_k=st.sampled_from([-1, 1, 5, 50]) | st.integers(1, 10**6),
    top_p=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
)


sample_requests = st.builds(
    SampleRequest,
    prompt=model_inputs(),
    sampling_params=sampling_params,
    num_samples=st.integers(1, 16),
    sampling_session_id=st.none() | _names,
    seq_id=st.none() | st.integers(0, 2**40),
    base_model=st.none() | _names,
    model_path=st.none() | _names.map(lambda name: "tinker://" + name),
    prompt_logprobs=st.booleans(),
    topk_prompt_logprobs=st.integers(0, 20),
    topk_sample_logprobs=st.integers(0, 20),
    prompt_alt_tokens_k=st.integers(0, 20),
    record_stability_info=st.booleans(),
)


def topk_rows(min_rows: int = 1, max_rows: int = 6, max_k: int = 4) -> st.SearchStrategy[List[Optional[List]]]:
    """Top-k tables: each row None or 1..max_k ``(token_id, logprob)`` pairs."""
    cell = st.tuples(token_ids, logprobs)
    row = st.none() | st.lists(cell, min_size=1, max_size=max_k)
    return st.lists(row, min_size=min_rows, max_size=max_rows)


@st.composite
def sampled_sequences(draw: st.DrawFn, *, with_topk: bool = True, with_sequence_id: bool = False) -> SampledSequence:
    """Sequences with logprobs None or one per token (None when there are no tokens).

    ``with_topk=False`` leaves ``topk_logprobs`` None (the legacy JSON form cannot carry it);
    ``with_sequence_id`` adds the promise's id (protobuf does not carry it).
    """
    tokens = draw(_token_lists())
    values = draw(st.none() | st.lists(logprobs, min_size=len(tokens), max_size=len(tokens)))
    topk = draw(topk_rows(len(tokens), len(tokens))) if with_topk and tokens and draw(st.booleans()) else None
    return SampledSequence(
        tokens=tokens,
        logprobs=values or None,
        stop_reason=draw(st.sampled_from(StopReason)),
        sequence_id=draw(_names) if with_sequence_id else None,
        topk_logprobs=topk,
    )


def _prompt_logprobs(length: int) -> st.SearchStrategy[List[Optional[float]]]:
    # Position 0 is never scored; later None entries appear with prompt_logprobs_last_n.
    rest = st.lists(st.none() | logprobs, min_size=length - 1, max_size=length - 1)
    return rest.map(lambda values: [None, *values])


@st.composite
def sample_responses(draw: st.DrawFn, *, sequence_topk: bool = True, sequence_ids: bool = False) -> SampleResponse:
    """Results as a server sends them; flags as for :func:`sampled_sequences`."""
    prompt_length = draw(st.integers(1, 8))
    sequence = sampled_sequences(with_topk=sequence_topk, with_sequence_id=sequence_ids)
    return SampleResponse(
        sequences=draw(st.lists(sequence, max_size=4)),
        prompt_logprobs=draw(st.none() | _prompt_logprobs(prompt_length)),
        topk_prompt_logprobs=draw(st.none() | topk_rows(prompt_length, prompt_length)),
        prompt_cache_hit_tokens=draw(st.sampled_from([0, 0, 3]) | st.integers(0, INT32_MAX)),
    )


# ---------------------------------------------------------------------------------------------
# Protobuf messages written by the official protobuf library (protocol section 6)

_PAD = (0, -99999.0)

_FIELD = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
_BYTES, _UINT32, _INT32, _INT64, _ENUM, _MESSAGE = (
    _FIELD.TYPE_BYTES,
    _FIELD.TYPE_UINT32,
    _FIELD.TYPE_INT32,
    _FIELD.TYPE_INT64,
    _FIELD.TYPE_ENUM,
    _FIELD.TYPE_MESSAGE,
)
# Fields tinkex does not know, one per skippable wire type: (number, type).
_EXTRA_FIELDS = [
    (15, _FIELD.TYPE_UINT64),
    (16, _FIELD.TYPE_FIXED64),
    (17, _FIELD.TYPE_STRING),
    (18, _FIELD.TYPE_FIXED32),
]


def _add_field(message: Any, name: str, number: int, kind: int, *, label: int = _OPTIONAL,
               type_name: str = "", presence: bool = False, oneof: Optional[int] = None) -> None:  # fmt: skip
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = f".tinker_public.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    if presence:  # proto3 `optional`: a synthetic one-member oneof
        field.proto3_optional = True
        field.oneof_index = len(message.oneof_decl)
        message.oneof_decl.add(name=f"_{name}")


def _build_schema(with_extras: bool) -> Any:
    """Section 6.1's schema (``with_extras`` adds fields tinkex must skip); returns SampleResponse."""
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"tinkex_test_{with_extras}.proto", package="tinker_public", syntax="proto3"
    )
    stop_reason = proto.enum_type.add(name="StopReason")
    stop_reason.value.add(name="STOP_REASON_STOP", number=0)
    stop_reason.value.add(name="STOP_REASON_LENGTH", number=1)
    dtype = proto.enum_type.add(name="DType")
    for number, name in enumerate(["UNSPECIFIED", "FLOAT32", "INT64", "INT32", "BFLOAT16"]):
        dtype.value.add(name=f"DTYPE_{name}", number=number)

    topk = proto.message_type.add(name="TopkLogprobs")
    _add_field(topk, "token_ids", 1, _BYTES)
    _add_field(topk, "logprobs", 2, _BYTES)
    _add_field(topk, "k", 3, _UINT32)
    _add_field(topk, "length", 4, _UINT32)
    csr = proto.message_type.add(name="SparseCsr")
    for number, name in enumerate(["values", "crow_indices", "col_indices"], start=1):
        _add_field(csr, name, number, _BYTES)
    tensor = proto.message_type.add(name="Tensor")
    tensor.oneof_decl.add(name="data")
    _add_field(tensor, "dense", 1, _BYTES, oneof=0)
    _add_field(tensor, "sparse_csr", 2, _MESSAGE, type_name="SparseCsr", oneof=0)
    _add_field(tensor, "dtype", 3, _ENUM, type_name="DType")
    _add_field(tensor, "shape", 4, _INT64, label=_REPEATED)
    alt = proto.message_type.add(name="PromptAltTokens")
    _add_field(alt, "tokens", 1, _MESSAGE, type_name="Tensor")
    _add_field(alt, "logprobs", 2, _MESSAGE, type_name="Tensor")

    sequence = proto.message_type.add(name="SampledSequence")
    _add_field(sequence, "stop_reason", 1, _ENUM, type_name="StopReason")
    _add_field(sequence, "tokens", 2, _BYTES)
    _add_field(sequence, "logprobs", 3, _BYTES, presence=True)
    _add_field(sequence, "topk_sampled_logprobs", 4, _MESSAGE, type_name="TopkLogprobs")
    response = proto.message_type.add(name="SampleResponse")
    _add_field(response, "sequences", 1, _MESSAGE, label=_REPEATED, type_name="SampledSequence")
    _add_field(response, "prompt_logprobs", 2, _BYTES, presence=True)
    _add_field(response, "topk_prompt_logprobs", 3, _MESSAGE, type_name="TopkLogprobs")
    _add_field(response, "prompt_cache_hit_tokens", 4, _INT32)
    _add_field(response, "target_prompt_logprobs", 5, _MESSAGE, type_name="Tensor")
    _add_field(response, "prompt_alt_tokens", 6, _MESSAGE, type_name="PromptAltTokens")
    if with_extras:
        for message in (topk, sequence, response):
            for number, kind in _EXTRA_FIELDS:
                _add_field(message, f"extra_{number}", number, kind)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tinker_public.SampleResponse"))


#: Section 6.1's SampleResponse as a protobuf message class, and the same with fields tinkex must skip.
PbSampleResponse = _build_schema(with_extras=False)
PbSampleResponseExtra = _build_schema(with_extras=True)


_int32s = st.integers(-(2**31), 2**31 - 1)
_float_words = st.one_of(
    st.floats(width=32, allow_nan=False),
    st.sampled_from([-99999.0, math.inf, -math.inf]),
).map(lambda x: struct.pack("<f", x))
_nan_words = st.sampled_from([bytes.fromhex(word) for word in ("0000c07f", "0000c0ff", "0100807f")])
_cells = st.one_of(st.tuples(_int32s, st.floats(-50, 0, width=32)), st.just(_PAD), st.just((0, -1.0)))


# Mostly nothing; sometimes a stray byte that makes an array break protocol 6.2.
_stray = st.sampled_from([b""] * 15 + [b"\x01"])


@st.composite
def _pb_topk(draw: st.DrawFn, message: Any) -> None:
    k, length = draw(st.integers(0, 4)), draw(st.integers(0, 5))
    size = k * length + draw(st.sampled_from([0] * 15 + [1]))
    cells = draw(st.lists(_cells, min_size=size, max_size=size))
    message.token_ids = b"".join(struct.pack("<i", cell[0]) for cell in cells)
    message.logprobs = b"".join(struct.pack("<f", cell[1]) for cell in cells)
    message.k, message.length = k, length
    _fill_extras(draw, message)


def _fill_extras(draw: st.DrawFn, message: Any) -> None:
    if hasattr(message, "extra_15") and draw(st.booleans()):
        message.extra_15 = draw(st.integers(0, 2**64 - 1))
        message.extra_16 = draw(st.integers(0, 2**64 - 1))
        message.extra_17 = draw(st.text(max_size=8))
        message.extra_18 = draw(st.integers(0, 2**32 - 1))


@st.composite
def protobuf_messages(draw: st.DrawFn, cls: Any = PbSampleResponseExtra) -> Any:
    """Messages written by the protobuf library itself, including values tinkex never writes."""
    message = cls()
    for _ in range(draw(st.integers(0, 3))):
        seq = message.sequences.add(stop_reason=draw(st.sampled_from([0, 1] * 15 + [2, -1])))
        seq.tokens = b"".join(struct.pack("<i", t) for t in draw(st.lists(_int32s, max_size=6))) + draw(_stray)
        if draw(st.booleans()):
            seq.logprobs = b"".join(draw(st.lists(_float_words, max_size=6))) + draw(_stray)
        if draw(st.booleans()):
            draw(_pb_topk(seq.topk_sampled_logprobs))
        _fill_extras(draw, seq)
    if draw(st.booleans()):
        message.prompt_logprobs = b"".join(draw(st.lists(_float_words | _nan_words, max_size=6))) + draw(_stray)
    if draw(st.booleans()):
        draw(_pb_topk(message.topk_prompt_logprobs))
    message.prompt_cache_hit_tokens = draw(_int32s)
    if draw(st.booleans()):
        message.target_prompt_logprobs.dense = draw(st.binary(max_size=8))
        message.target_prompt_logprobs.shape.extend(draw(st.lists(st.integers(-5, 5), max_size=3)))
        message.prompt_alt_tokens.tokens.sparse_csr.values = draw(st.binary(max_size=8))
    _fill_extras(draw, message)
    return message


@st.composite
def damaged_messages(draw: st.DrawFn) -> bytes:
    """Valid messages cut short, with bytes flipped, inserted or deleted."""
    data = bytearray(draw(protobuf_messages()).SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        where = draw(st.integers(0, len(data)))
        if action == "cut":
            del data[where:]
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=4))
        elif where < len(data):
            if action == "flip":
                data[where] ^= draw(st.integers(1, 255))
            else:
                del data[where]
    return bytes(data)
