"""The protobuf ``Tensor`` of protocol 6.1, for ``SampleResponse`` fields 5 and 6.

``Tensor``: ``dense`` bytes (1) or ``sparse_csr`` (2: ``values`` 1, ``crow_indices`` 2,
``col_indices`` 3, indices int64), ``dtype`` (3: FLOAT32 1, INT64 2, INT32 3, BFLOAT16 4) and
``shape`` (4, packed or repeated varints); numbers little-endian. INT32 widens to ``int64`` and
BFLOAT16 to ``float32``, the two dtypes ``TensorData`` has. ``PromptAltTokens``: ``tokens`` (1)
and ``logprobs`` (2), both Tensors. As in protobuf, a message field that occurs more than once
is the merge of its occurrences (the parse of their concatenation), and of ``dense`` and
``sparse_csr`` (a oneof) the last one wins.

Example:
    >>> read_tensor(bytes.fromhex("0a 04 00 00 00 bf 18 01 22 02 01 01"), "t")
    TensorData(data=[-0.5], dtype='float32', shape=[1, 1], sparse_crow_indices=None, sparse_col_indices=None)
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Dict, List, Optional, Tuple

from ..errors import DecodeError
from ..types import PromptAltTokens, TensorData

__all__ = ["read_tensor", "read_alt_tokens"]

_VARINT, _LENGTH_DELIMITED = 0, 2
_DTYPES = {1: ("float32", "f"), 2: ("int64", "q"), 3: ("int64", "i"), 4: ("float32", "H")}


def _numbers(payload: bytes, code: str, what: str) -> list:
    values = array(code)
    if len(payload) % values.itemsize:
        raise DecodeError(f"{what}: {len(payload)} bytes is not a whole number of {values.itemsize}-byte values",
                          offset=0)
    values.frombytes(payload)
    if sys.byteorder == "big":  # pragma: no cover - no big-endian CI
        values.byteswap()
    if code == "H":  # bfloat16: the high half of a float32
        return [struct.unpack("<f", struct.pack("<I", bits << 16))[0] for bits in values]
    return values.tolist()


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _varints(buf: bytes, start: int, stop: int) -> List[int]:
    from .proto import _read_varint

    out: List[int] = []
    while start < stop:
        value, start = _read_varint(buf, start, stop)
        out.append(_signed(value))
    return out


def _fields(buf: bytes, what: str, wanted: Dict[int, int]) -> List[Tuple[int, int, int, int]]:
    """The known fields of the message ``buf`` in order: (number, wire, value, end); ``wanted``
    maps each known number to its wire type (shape, 4, takes both the packed and the plain form)."""
    from .proto import _expect, _walk

    out = []
    for key_pos, number, wire, value, end in _walk(buf, 0, len(buf)):
        if number in wanted:
            if not (number == 4 and wanted[4] == _VARINT and wire == _LENGTH_DELIMITED):
                _expect(wire, wanted[number], f"{what} field {number}", key_pos)
            out.append((number, wire, value, end))
    return out


def _csr(buf: bytes, what: str) -> Tuple[bytes, bytes, bytes]:
    parts = {1: b"", 2: b"", 3: b""}
    for number, _wire, value, end in _fields(buf, f"{what}.sparse_csr", dict.fromkeys(parts, _LENGTH_DELIMITED)):
        parts[number] = buf[value:end]  # bytes fields: the last occurrence wins
    return parts[1], parts[2], parts[3]


def read_tensor(buf: bytes, what: str) -> TensorData:
    """Decode the Tensor message ``buf``; ``DecodeError`` names ``what``."""
    dense: Optional[bytes] = None
    csr: Optional[bytes] = None
    dtype, shape = 0, []
    wanted = {1: _LENGTH_DELIMITED, 2: _LENGTH_DELIMITED, 3: _VARINT, 4: _VARINT}
    for number, wire, value, end in _fields(buf, what, wanted):
        if number == 1:
            dense, csr = buf[value:end], None
        elif number == 2:
            dense, csr = None, (csr or b"") + buf[value:end]
        elif number == 3:
            dtype = value
        else:
            shape += _varints(buf, value, end) if wire == _LENGTH_DELIMITED else [_signed(value)]
    if dtype not in _DTYPES:
        raise DecodeError(f"{what}: unsupported tensor dtype {dtype}", offset=0)
    name, code = _DTYPES[dtype]
    if csr is None:
        data = _numbers(dense or b"", code, what)
        return TensorData(data=data, dtype=name, shape=shape or [len(data)])
    values, crow, col = _csr(csr, what)
    return TensorData(data=_numbers(values, code, what), dtype=name, shape=shape,
                      sparse_crow_indices=_numbers(crow, "q", what), sparse_col_indices=_numbers(col, "q", what))


def read_alt_tokens(buf: bytes) -> PromptAltTokens:
    """Decode the PromptAltTokens message ``buf``."""
    parts: Dict[int, bytes] = {}
    for number, _wire, value, end in _fields(buf, "prompt_alt_tokens", {1: _LENGTH_DELIMITED, 2: _LENGTH_DELIMITED}):
        parts[number] = parts.get(number, b"") + buf[value:end]
    if 1 not in parts or 2 not in parts:
        raise DecodeError("prompt_alt_tokens needs both tokens and logprobs", offset=0)
    return PromptAltTokens(tokens=read_tensor(parts[1], "prompt_alt_tokens.tokens"),
                           logprobs=read_tensor(parts[2], "prompt_alt_tokens.logprobs"))
