"""Protobuf encoding of the 0.38 answer fields the shared encoder leaves out: fields 5
(``target_prompt_logprobs``, a Tensor) and 6 (``prompt_alt_tokens``, two Tensors).

A protobuf message may be sent as concatenated parts (a later field simply adds to the
message), so the server appends these bytes to ``encode_sample_response``'s output.
Tensor (protocol 6.1): ``dense`` bytes (1) or ``sparse_csr`` {values 1, crow_indices 2,
col_indices 3} (2), ``dtype`` (3: FLOAT32 = 1, INT64 = 2), ``shape`` packed int64 (4); numbers
little-endian.

Example:
    >>> from tinkex.types import SampledSequence, SampleResponse, TensorData
    >>> extras = encode_extras(SampleResponse(sequences=[SampledSequence(tokens=[])],
    ...     target_prompt_logprobs=TensorData(data=[-0.5], dtype="float32", shape=[1, 1])))
    >>> extras.hex(" ")
    '2a 0c 0a 04 00 00 00 bf 18 01 22 02 01 01'
"""

from __future__ import annotations

import sys
from array import array
from typing import Sequence

from ..types import SampleResponse, TensorData

__all__ = ["encode_extras"]

_LENGTH_DELIMITED, _VARINT = 2, 0
_DTYPES = {"float32": 1, "int64": 2}
_ARRAY_CODES = {"float32": "f", "int64": "q"}


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= 0xFFFFFFFFFFFFFFFF
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _little_endian(code: str, values: Sequence[float]) -> bytes:
    packed = array(code, values)
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        packed.byteswap()
    return packed.tobytes()


def _tensor(tensor: TensorData) -> bytes:
    values = _little_endian(_ARRAY_CODES[tensor.dtype], tensor.data)
    if tensor.is_sparse:
        csr = (_field(1, values) + _field(2, _little_endian("q", tensor.sparse_crow_indices or []))
               + _field(3, _little_endian("q", tensor.sparse_col_indices or [])))  # fmt: skip
        body = _field(2, csr)
    else:
        body = _field(1, values)
    body += _varint(3 << 3 | _VARINT) + _varint(_DTYPES[tensor.dtype])
    shape = tensor.shape if tensor.shape is not None else [len(tensor.data)]
    return body + _field(4, b"".join(_varint(size) for size in shape))


def encode_extras(response: SampleResponse) -> bytes:
    """Fields 5 and 6 of ``response`` as protobuf bytes (empty when it has neither)."""
    out = b""
    if response.target_prompt_logprobs is not None:
        out += _field(5, _tensor(response.target_prompt_logprobs))
    alt = response.prompt_alt_tokens
    if alt is not None:
        out += _field(6, _field(1, _tensor(alt.tokens)) + _field(2, _tensor(alt.logprobs)))
    return out
