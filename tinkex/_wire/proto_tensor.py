"""The protobuf ``Tensor`` of protocol 6.1, for ``SampleResponse`` fields 5 and 6.

``Tensor``: ``dense`` bytes (1) or ``sparse_csr`` (2: ``values`` 1, ``crow_indices`` 2,
``col_indices`` 3, indices int64), ``dtype`` (3: FLOAT32 1, INT64 2, INT32 3, BFLOAT16 4) and
``shape`` (4, packed or repeated varints); numbers little-endian. INT32 widens to ``int64`` and
BFLOAT16 to ``float32``, the two dtypes ``TensorData`` has. ``PromptAltTokens``: ``tokens`` (1)
and ``logprobs`` (2), both Tensors. As in protobuf, a message field that occurs more than once
is the merge of its occurrences (the parse of their concatenation), and of ``dense`` and
``sparse_csr`` (a oneof) the last one wins.

The protobuf framing (varints, the field walker) is :mod:`tinkex._wire.proto`'s, handed in as a
:class:`Framing`, so this module does not import that one (which imports this).

Example:
    >>> from tinkex._wire.proto import decode_sample_response
    >>> decode_sample_response(bytes.fromhex("2a 0c 0a 04 00 00 00 bf 18 01 22 02 01 01")).target_prompt_logprobs
    TensorData(data=[-0.5], dtype='float32', shape=[1, 1], sparse_crow_indices=None, sparse_col_indices=None)
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import DecodeError
from ..types import PromptAltTokens, TensorData

__all__ = ["Framing", "read_tensor", "read_alt_tokens"]

_VARINT, _LENGTH_DELIMITED = 0, 2
_DTYPES = {1: ("float32", "f"), 2: ("int64", "q"), 3: ("int64", "i"), 4: ("float32", "H")}


class Framing(NamedTuple):
    """The protobuf primitives this module reads with: ``walk(buf, start, stop)`` yields
    ``(key offset, number, wire type, value, end)``; ``expect`` checks a wire type;
    ``read_varint(buf, pos, end)`` returns ``(value, next offset)``."""

    walk: Callable[[bytes, int, int], Iterator[Tuple[int, int, int, int, int]]]
    expect: Callable[[int, int, str, int], None]
    read_varint: Callable[[bytes, int, int], Tuple[int, int]]


def _numbers(payload: bytes, code: str, what: str) -> List[Any]:
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


def _varints(framing: Framing, buf: bytes, start: int, stop: int) -> List[int]:
    out: List[int] = []
    while start < stop:
        value, start = framing.read_varint(buf, start, stop)
        out.append(_signed(value))
    return out


def _fields(framing: Framing, buf: bytes, what: str, wanted: Dict[int, int]) -> List[Tuple[int, int, int, int]]:
    """The known fields of the message ``buf`` in order: (number, wire, value, end); ``wanted``
    maps each known number to its wire type (shape, 4, takes both the packed and the plain form)."""
    out = []
    for key_pos, number, wire, value, end in framing.walk(buf, 0, len(buf)):
        if number in wanted:
            if not (number == 4 and wanted[4] == _VARINT and wire == _LENGTH_DELIMITED):
                framing.expect(wire, wanted[number], f"{what} field {number}", key_pos)
            out.append((number, wire, value, end))
    return out


def _csr(framing: Framing, buf: bytes, what: str) -> Tuple[bytes, bytes, bytes]:
    parts = {1: b"", 2: b"", 3: b""}
    wanted = dict.fromkeys(parts, _LENGTH_DELIMITED)
    for number, _wire, value, end in _fields(framing, buf, f"{what}.sparse_csr", wanted):
        parts[number] = buf[value:end]  # bytes fields: the last occurrence wins
    return parts[1], parts[2], parts[3]


def read_tensor(framing: Framing, buf: bytes, what: str) -> TensorData:
    """Decode the Tensor message ``buf``; ``DecodeError`` names ``what``."""
    dense: Optional[bytes] = None
    csr: Optional[bytes] = None
    dtype, shape = 0, []
    wanted = {1: _LENGTH_DELIMITED, 2: _LENGTH_DELIMITED, 3: _VARINT, 4: _VARINT}
    for number, wire, value, end in _fields(framing, buf, what, wanted):
        if number == 1:
            dense, csr = buf[value:end], None
        elif number == 2:
            dense, csr = None, (csr or b"") + buf[value:end]
        elif number == 3:
            dtype = value
        else:
            shape += _varints(framing, buf, value, end) if wire == _LENGTH_DELIMITED else [_signed(value)]
    if dtype not in _DTYPES:
        raise DecodeError(f"{what}: unsupported tensor dtype {dtype}", offset=0)
    name, code = _DTYPES[dtype]
    if csr is None:
        data = _numbers(dense or b"", code, what)
        return TensorData(data=data, dtype=name, shape=shape or [len(data)])
    values, crow, col = _csr(framing, csr, what)
    return TensorData(data=_numbers(values, code, what), dtype=name, shape=shape,
                      sparse_crow_indices=_numbers(crow, "q", what), sparse_col_indices=_numbers(col, "q", what))


def read_alt_tokens(framing: Framing, buf: bytes) -> PromptAltTokens:
    """Decode the PromptAltTokens message ``buf``."""
    parts: Dict[int, bytes] = {}
    wanted = {1: _LENGTH_DELIMITED, 2: _LENGTH_DELIMITED}
    for number, _wire, value, end in _fields(framing, buf, "prompt_alt_tokens", wanted):
        parts[number] = parts.get(number, b"") + buf[value:end]
    if 1 not in parts or 2 not in parts:
        raise DecodeError("prompt_alt_tokens needs both tokens and logprobs", offset=0)
    return PromptAltTokens(tokens=read_tensor(framing, parts[1], "prompt_alt_tokens.tokens"),
                           logprobs=read_tensor(framing, parts[2], "prompt_alt_tokens.logprobs"))
