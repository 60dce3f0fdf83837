"""The protobuf SampleResponse of protocol section 6, walked by hand (no protobuf runtime).

The message is proto3 ``tinker_public.SampleResponse``. Its numeric arrays are raw
little-endian byte strings (int32 tokens, float32 logprobs), so the decoder reads the framing
field by field and converts each array in one bulk step with :mod:`array`.

Decoding rules (protocol 6.2): NaN in ``prompt_logprobs`` means "not computed" and becomes None;
a top-k cell ``(0, -99999.0)`` is padding: a row starting with one is None and trailing ones are
trimmed; empty or absent arrays and a top-k table with ``k`` or ``length`` 0 decode to None;
unknown fields (wire types 0, 1, 2 and 5) are skipped. ``SampledSequence.topk_sampled_logprobs``
(field 4) becomes ``SampledSequence.topk_logprobs``. ``target_prompt_logprobs`` (field 5) and
``prompt_alt_tokens`` (field 6) are Tensors, decoded by :mod:`tinkex._wire.proto_tensor`.

Anything truncated or malformed raises :class:`tinkex.errors.DecodeError` whose ``offset`` is the
byte offset of the fault; a wrong wire type for a known field, a varint longer than 10 bytes,
a length past the end of its message, an array whose byte length is not a multiple of 4 and a
top-k array holding other than ``k * length`` cells all count as malformed.

Example:
    >>> from tinkex.types import SampledSequence, SampleResponse, StopReason
    >>> resp = SampleResponse(sequences=[SampledSequence(tokens=[36], stop_reason=StopReason.LENGTH)])
    >>> encode_sample_response(resp).hex(" ")
    '0a 08 08 01 12 04 24 00 00 00'
    >>> decode_sample_response(encode_sample_response(resp)) == resp
    True
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from ..errors import DecodeError, ValidationError
from ..types import SampledSequence, SampleResponse, StopReason, TopkLogprobs
from .bounds import ResultBounds
from .proto_tensor import Framing, read_alt_tokens, read_tensor

__all__ = ["decode_sample_response", "encode_sample_response"]

_UNBOUNDED = ResultBounds()

if array("i").itemsize != 4 or array("f").itemsize != 4:  # pragma: no cover - no such CPython platform known
    raise ImportError("tinkex._wire.proto needs 4-byte C int and float arrays")

_BIG_ENDIAN_HOST = sys.byteorder == "big"
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_WIRE_NAMES = {
    _VARINT: "varint",
    _FIXED64: "fixed64",
    _LENGTH_DELIMITED: "length-delimited",
    _FIXED32: "fixed32",
}
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_MAX_VARINT_BYTES = 10
_PAD_TOKEN = 0
_PAD_LOGPROB = -99999.0
_NAN = float("nan")
_STOP_REASONS = {0: StopReason.STOP, 1: StopReason.LENGTH}

Buffer = Union[bytes, bytearray, memoryview]
# One field as the walker sees it: (key offset, field number, wire type, value, payload end).
# ``value`` is the integer for varints and the payload's start offset for every other wire type.
_Field = Tuple[int, int, int, int, int]


class _Span(NamedTuple):
    start: int
    stop: int


class _TopkParts(NamedTuple):
    """A TopkLogprobs message read but not yet converted; repeats of it merge field by field."""

    token_ids: Optional[_Span]
    logprobs: Optional[_Span]
    k: int
    length: int
    offset: int


# ---------------------------------------------------------------------------------------------
# Framing


def _read_varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    """Return the varint at ``pos`` and the offset after it."""
    if pos < end:
        byte = buf[pos]
        if byte < 0x80:  # one-byte varints are nearly every key and length: keep them cheap
            return byte, pos + 1
    return _read_long_varint(buf, pos, end)


def _read_long_varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    start = pos
    value = shift = 0
    while pos < end and pos - start < _MAX_VARINT_BYTES:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _MASK64, pos
        shift += 7
    if pos - start >= _MAX_VARINT_BYTES:
        raise DecodeError(f"varint at offset {start} is longer than {_MAX_VARINT_BYTES} bytes", offset=start)
    raise DecodeError(f"truncated varint at offset {start}", offset=start)


def _walk(buf: bytes, pos: int, end: int) -> Iterator[_Field]:
    """Yield every field of the message in ``buf[pos:end]``, checking its framing."""
    while pos < end:
        key_pos = pos
        key, pos = _read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise DecodeError(f"invalid field number 0 at offset {key_pos}", offset=key_pos)
        if wire == _VARINT:
            value, pos = _read_varint(buf, pos, end)
        elif wire == _LENGTH_DELIMITED:
            size, value = _read_varint(buf, pos, end)
            pos = value + size
            if pos > end:
                raise DecodeError(
                    f"field {number}: length {size} at offset {key_pos} runs past the end of its message ({end})",
                    offset=key_pos,
                )
        elif wire in (_FIXED32, _FIXED64):
            value, pos = pos, pos + (4 if wire == _FIXED32 else 8)
            if pos > end:
                raise DecodeError(f"field {number}: truncated fixed-width value at offset {key_pos}", offset=key_pos)
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wire} at offset {key_pos}", offset=key_pos)
        yield key_pos, number, wire, value, pos


def _expect(wire: int, wanted: int, name: str, key_pos: int) -> None:
    if wire != wanted:
        raise DecodeError(
            f"{name}: wire type {_WIRE_NAMES.get(wire, wire)} where {_WIRE_NAMES[wanted]} was expected "
            f"at offset {key_pos}",
            offset=key_pos,
        )


def _as_int32(value: int) -> int:
    value &= _MASK32
    return value - 0x100000000 if value & 0x80000000 else value


# ---------------------------------------------------------------------------------------------
# Arrays


def _unpack(buf: bytes, span: _Span, code: str, name: str) -> List[Any]:
    size = span.stop - span.start
    if size & 3:
        raise DecodeError(f"{name}: {size} bytes is not a whole number of 4-byte values", offset=span.start)
    values = array(code)
    values.frombytes(memoryview(buf)[span.start : span.stop])
    if _BIG_ENDIAN_HOST:
        values.byteswap()
    return values.tolist()


def _float_list(buf: bytes, span: Optional[_Span], name: str) -> Optional[List[float]]:
    if span is None or span.start == span.stop:
        return None
    return _unpack(buf, span, "f", name)


def _prompt_logprobs(buf: bytes, span: Optional[_Span]) -> Optional[List[Optional[float]]]:
    values = _float_list(buf, span, "prompt_logprobs")
    if values is None:
        return None
    return [None if value != value else value for value in values]  # NaN (not computed) -> None


def _topk_rows(buf: bytes, parts: Optional[_TopkParts], name: str) -> Optional[List[TopkLogprobs]]:
    if parts is None or parts.k == 0 or parts.length == 0:
        return None
    k, cells = parts.k, parts.k * parts.length
    empty = _Span(parts.offset, parts.offset)
    token_ids = _unpack(buf, parts.token_ids or empty, "i", f"{name}.token_ids")
    logprobs = _unpack(buf, parts.logprobs or empty, "f", f"{name}.logprobs")
    if len(token_ids) != cells or len(logprobs) != cells:
        raise DecodeError(
            f"{name}: {len(token_ids)} token ids and {len(logprobs)} logprobs for k={k} x length={parts.length}",
            offset=parts.offset,
        )
    pairs = list(zip(token_ids, logprobs))
    return [_topk_row(pairs, start, start + k) for start in range(0, cells, k)]


def _is_padding(cell: Tuple[int, float]) -> bool:
    return cell[0] == _PAD_TOKEN and cell[1] == _PAD_LOGPROB


def _topk_row(pairs: List[Tuple[int, float]], start: int, stop: int) -> TopkLogprobs:
    if _is_padding(pairs[start]):
        return None
    while _is_padding(pairs[stop - 1]):
        stop -= 1
    return pairs[start:stop]


# ---------------------------------------------------------------------------------------------
# Messages


def _read_topk(buf: bytes, start: int, end: int, merged: Optional[_TopkParts]) -> _TopkParts:
    if merged is None:
        merged = _TopkParts(None, None, 0, 0, start)
    token_ids, logprobs, k, length, _ = merged
    for key_pos, number, wire, value, stop in _walk(buf, start, end):
        if number == 1:
            _expect(wire, _LENGTH_DELIMITED, "TopkLogprobs.token_ids", key_pos)
            token_ids = _Span(value, stop)
        elif number == 2:
            _expect(wire, _LENGTH_DELIMITED, "TopkLogprobs.logprobs", key_pos)
            logprobs = _Span(value, stop)
        elif number == 3:
            _expect(wire, _VARINT, "TopkLogprobs.k", key_pos)
            k = value & _MASK32
        elif number == 4:
            _expect(wire, _VARINT, "TopkLogprobs.length", key_pos)
            length = value & _MASK32
    return _TopkParts(token_ids, logprobs, k, length, start)


def _stop_reason(value: int, key_pos: int) -> StopReason:
    reason = _STOP_REASONS.get(_as_int32(value))
    if reason is None:
        raise DecodeError(f"unknown StopReason {_as_int32(value)} at offset {key_pos}", offset=key_pos)
    return reason


def _check_rows(count: int, limit: Optional[int], name: str, offset: int) -> None:
    if limit is not None and count > limit:
        raise DecodeError(f"{name}: {count} entries, more than the request can produce ({limit})", offset=offset)


def _check_span(span: Optional[_Span], limit: Optional[int], name: str) -> None:
    if span is not None:
        _check_rows((span.stop - span.start) // 4, limit, name, span.start)


def _check_topk(parts: Optional[_TopkParts], rows: Optional[int], k: Optional[int], name: str) -> None:
    if parts is not None and parts.k and parts.length:
        _check_rows(parts.length, rows, f"{name}.length", parts.offset)
        _check_rows(parts.k, k, f"{name}.k", parts.offset)


def _read_sequence(buf: bytes, start: int, end: int, bounds: ResultBounds = _UNBOUNDED) -> SampledSequence:
    stop_reason = StopReason.STOP
    tokens: Optional[_Span] = None
    logprobs: Optional[_Span] = None
    topk: Optional[_TopkParts] = None
    for key_pos, number, wire, value, stop in _walk(buf, start, end):
        if number == 1:
            _expect(wire, _VARINT, "SampledSequence.stop_reason", key_pos)
            stop_reason = _stop_reason(value, key_pos)
        elif number == 2:
            _expect(wire, _LENGTH_DELIMITED, "SampledSequence.tokens", key_pos)
            tokens = _Span(value, stop)
        elif number == 3:
            _expect(wire, _LENGTH_DELIMITED, "SampledSequence.logprobs", key_pos)
            logprobs = _Span(value, stop)
        elif number == 4:
            _expect(wire, _LENGTH_DELIMITED, "SampledSequence.topk_sampled_logprobs", key_pos)
            topk = _read_topk(buf, value, stop, topk)
    _check_span(tokens, bounds.max_tokens, "SampledSequence.tokens")
    _check_span(logprobs, bounds.max_tokens, "SampledSequence.logprobs")
    _check_topk(topk, bounds.max_tokens, bounds.max_sample_k, "SampledSequence.topk_sampled_logprobs")
    return SampledSequence(
        tokens=[] if tokens is None else _unpack(buf, tokens, "i", "SampledSequence.tokens"),
        logprobs=_float_list(buf, logprobs, "SampledSequence.logprobs"),
        stop_reason=stop_reason,
        topk_logprobs=_topk_rows(buf, topk, "SampledSequence.topk_sampled_logprobs"),
    )


def decode_sample_response(data: Buffer, bounds: ResultBounds = _UNBOUNDED) -> SampleResponse:
    """Decode a protobuf ``SampleResponse`` body.

    Args:
        data: the response body (``Content-Type: application/x-protobuf``).
        bounds: what the request can produce; more sequences, tokens or rows than that are a
            :class:`DecodeError` found before they are built (a body of empty sequences would
            otherwise become one object per two bytes).

    Returns:
        The result; its sequences have no ``sequence_id`` yet (that comes from the promise).

    Raises:
        DecodeError: the body is truncated or malformed; ``offset`` says where.

    Example:
        >>> decode_sample_response(bytes.fromhex("0a080801120424000000")).sequences[0].tokens
        [36]
        >>> decode_sample_response(bytes.fromhex("0a0808011204240000")).sequences[0].tokens
        Traceback (most recent call last):
        ...
        tinkex.errors.DecodeError: field 1: length 8 at offset 0 runs past the end of its message (9)
    """
    buf = data if type(data) is bytes else bytes(data)
    sequences: List[SampledSequence] = []
    prompt_logprobs: Optional[_Span] = None
    topk: Optional[_TopkParts] = None
    cache_hits = 0
    extras: Dict[Any, Any] = {5: [], 6: [], "present": set()}  # a repeated message field merges its occurrences
    for key_pos, number, wire, value, stop in _walk(buf, 0, len(buf)):
        if number == 1:
            _expect(wire, _LENGTH_DELIMITED, "SampleResponse.sequences", key_pos)
            _check_rows(len(sequences) + 1, bounds.max_sequences, "SampleResponse.sequences", key_pos)
            sequences.append(_read_sequence(buf, value, stop, bounds))
        elif number == 2:
            _expect(wire, _LENGTH_DELIMITED, "SampleResponse.prompt_logprobs", key_pos)
            prompt_logprobs = _Span(value, stop)
        elif number == 3:
            _expect(wire, _LENGTH_DELIMITED, "SampleResponse.topk_prompt_logprobs", key_pos)
            topk = _read_topk(buf, value, stop, topk)
        elif number == 4:
            _expect(wire, _VARINT, "SampleResponse.prompt_cache_hit_tokens", key_pos)
            cache_hits = _as_int32(value)
        elif number == 5 or number == 6:
            _expect(wire, _LENGTH_DELIMITED, f"SampleResponse field {number}", key_pos)
            extras[number].append(_Span(value, stop))  # joined once: += per piece is quadratic
            extras["present"].add(number)
    _check_span(prompt_logprobs, bounds.max_prompt_rows, "SampleResponse.prompt_logprobs")
    _check_topk(topk, bounds.max_prompt_rows, bounds.max_prompt_k, "SampleResponse.topk_prompt_logprobs")
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=_prompt_logprobs(buf, prompt_logprobs),
        topk_prompt_logprobs=_topk_rows(buf, topk, "SampleResponse.topk_prompt_logprobs"),
        prompt_cache_hit_tokens=cache_hits,
        **_read_extras(buf, extras),
    )


def _read_extras(buf: bytes, extras: Dict[Any, Any]) -> Dict[str, Any]:
    """Fields 5 and 6 (their bytes, merged), decoded when present."""
    if not extras["present"]:
        return {}  # the usual answer: nothing to set up
    framing = Framing(walk=_walk, expect=_expect, read_varint=_read_varint)
    out: Dict[str, Any] = {}
    view = memoryview(buf)
    if 5 in extras["present"]:
        joined = b"".join(view[span.start:span.stop] for span in extras[5])
        out["target_prompt_logprobs"] = read_tensor(framing, joined, "target_prompt_logprobs")
    if 6 in extras["present"]:
        out["prompt_alt_tokens"] = read_alt_tokens(framing, b"".join(view[span.start:span.stop] for span in extras[6]))
    return out


# ---------------------------------------------------------------------------------------------
# Encoding (the local server's side)


def _varint_bytes(value: int) -> bytes:
    value &= _MASK64  # negative int32 values travel sign-extended to ten bytes, as in protobuf
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _put_varint(out: bytearray, number: int, value: int) -> None:
    out += _varint_bytes(number << 3 | _VARINT)
    out += _varint_bytes(value)


def _put_bytes(out: bytearray, number: int, payload: bytes) -> None:
    out += _varint_bytes(number << 3 | _LENGTH_DELIMITED)
    out += _varint_bytes(len(payload))
    out += payload


def _pack(code: str, values: Sequence[Any], field: str) -> bytes:
    try:
        packed = array(code, values)
    except (OverflowError, TypeError):
        bad = next((value for value in values if not _packs(code, value)), values)
        kind = "int32" if code == "i" else "float32"
        raise ValidationError(f"{field} must hold {kind} values, got {bad!r}", field=field, value=bad) from None
    if _BIG_ENDIAN_HOST:
        packed.byteswap()
    return packed.tobytes()


def _packs(code: str, value: Any) -> bool:
    try:
        array(code, [value])
    except (OverflowError, TypeError):
        return False
    return True


def _encode_topk(rows: Sequence[TopkLogprobs], field: str) -> bytes:
    k = max([len(row) for row in rows if row] + [1])  # k >= 1 keeps all-None tables distinguishable
    token_ids: List[int] = []
    logprobs: List[float] = []
    for row in rows:
        cells = list(row or ())
        cells += [(_PAD_TOKEN, _PAD_LOGPROB)] * (k - len(cells))
        token_ids.extend(cell[0] for cell in cells)
        logprobs.extend(cell[1] for cell in cells)
    out = bytearray()
    _put_bytes(out, 1, _pack("i", token_ids, f"{field}.token_ids"))
    _put_bytes(out, 2, _pack("f", logprobs, f"{field}.logprobs"))
    _put_varint(out, 3, k)
    _put_varint(out, 4, len(rows))
    return bytes(out)


def _encode_sequence(seq: SampledSequence) -> bytes:
    out = bytearray()
    try:
        reason = StopReason(seq.stop_reason)
    except ValueError:
        raise ValidationError(
            f"stop_reason must be 'stop' or 'length', got {seq.stop_reason!r}",
            field="stop_reason",
            value=seq.stop_reason,
        ) from None
    if reason is StopReason.LENGTH:
        _put_varint(out, 1, 1)
    if seq.tokens:
        _put_bytes(out, 2, _pack("i", seq.tokens, "tokens"))
    if seq.logprobs:
        _put_bytes(out, 3, _pack("f", seq.logprobs, "logprobs"))
    if seq.topk_logprobs:
        _put_bytes(out, 4, _encode_topk(seq.topk_logprobs, "topk_logprobs"))
    return bytes(out)


def encode_sample_response(resp: SampleResponse) -> bytes:
    """Encode a result as protobuf, the way the hosted service does.

    None entries of ``prompt_logprobs`` become NaN; top-k rows are padded with ``(0, -99999.0)``
    to the longest row. Empty and None arrays are both left out (both decode to None), and
    ``sequence_id`` is not part of the message.

    Raises:
        ValidationError: a token id or logprob that does not fit int32 / float32, or a bad
            stop reason, naming the field and the value.

    Example:
        >>> len(encode_sample_response(SampleResponse(sequences=[], prompt_logprobs=[None, -1.1])))
        10
    """
    out = bytearray()
    for seq in resp.sequences:
        _put_bytes(out, 1, _encode_sequence(seq))
    if resp.prompt_logprobs:
        values = [_NAN if value is None else value for value in resp.prompt_logprobs]
        _put_bytes(out, 2, _pack("f", values, "prompt_logprobs"))
    if resp.topk_prompt_logprobs:
        _put_bytes(out, 3, _encode_topk(resp.topk_prompt_logprobs, "topk_prompt_logprobs"))
    if resp.prompt_cache_hit_tokens:
        _put_varint(out, 4, resp.prompt_cache_hit_tokens)
    return bytes(out)
