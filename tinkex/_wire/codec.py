"""JSON on the wire (protocol 2.3) and the choice between protobuf and JSON sample results.

Request bodies are compact UTF-8 JSON with non-ASCII characters unescaped and no NaN.
Decoding is strict: invalid UTF-8, invalid JSON, the non-standard constants ``NaN`` /
``Infinity`` and pathologically deep nesting all raise :class:`tinkex.errors.DecodeError`,
whose message names what was being decoded and quotes a capped excerpt of the body.

Example:
    >>> dumps({"tokens": [1, 2], "text": "é"})
    b'{"tokens":[1,2],"text":"\\xc3\\xa9"}'
    >>> loads(b'{"a":1}', what="example")
    {'a': 1}
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterator, Optional, Tuple, Union

from ..errors import DecodeError, ValidationError
from ..types import SampleResponse
from . import proto as _proto
from .bounds import ResultBounds

__all__ = ["dumps", "loads", "decode_sample_result", "PROTOBUF_CONTENT_TYPE"]

PROTOBUF_CONTENT_TYPE = "application/x-protobuf"
_EXCERPT_CHARS = 200


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_decoder = json.JSONDecoder(parse_constant=_reject_constant)


#: json.dumps with these options builds a new encoder on every call; this one is shared (it keeps no state).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact UTF-8 JSON.

    Raises:
        ValidationError: for NaN or infinities (naming where they sit, e.g.
            ``sampling_params.temperature``), values JSON cannot hold, or unencodable strings.

    Example:
        >>> dumps({"temperature": 1.0, "top_k": -1})
        b'{"temperature":1.0,"top_k":-1}'
    """
    try:
        text = _ENCODER.encode(value)
    except ValueError as exc:
        raise _value_error(value, exc) from None
    except TypeError as exc:
        raise ValidationError(f"cannot encode as JSON: {exc}", field="value") from None
    except RecursionError:
        raise ValidationError("cannot encode as JSON: nested too deeply", field="value") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        chars = exc.object[exc.start : exc.end]
        raise ValidationError(f"string is not encodable as UTF-8: {chars!r}", field="value", value=chars) from None


def _value_error(value: Any, exc: ValueError) -> ValidationError:
    """Name the first NaN or infinity in ``value``; json itself does not say where it was."""
    try:
        found = next(_non_finite(value, ""), None)
    except RecursionError:  # a circular reference, which json reports as a ValueError too
        found = None
    if found is None:
        return ValidationError(f"cannot encode as JSON: {exc}", field="value")
    path, bad = found
    return ValidationError(f"{path} must be a finite number, got {bad!r}", field=path, value=bad)


def _non_finite(value: Any, path: str) -> Iterator[Tuple[str, float]]:
    """Yield (path, value) for every NaN or infinity inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        yield (path or "value"), value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{index}]")


def loads(data: Union[bytes, bytearray, memoryview, str], *, what: str) -> Any:
    """Decode a JSON body.

    Args:
        data: the body, UTF-8 bytes or text.
        what: what is being decoded, for the error message (e.g. ``"asample promise"``).

    Raises:
        DecodeError: with ``offset`` (a byte offset for byte input) and a capped excerpt.

    Example:
        >>> loads(b"[1,", what="example")
        Traceback (most recent call last):
        ...
        tinkex.errors.DecodeError: example: invalid JSON (Expecting value) at offset 3: '[1,'
    """
    if isinstance(data, str):
        text = data
    else:
        raw = bytes(data)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            window = max(0, exc.start - _EXCERPT_CHARS // 2)
            excerpt = _excerpt(raw[window : window + _EXCERPT_CHARS].decode("utf-8", "replace"), 0)
            raise DecodeError(f"{what}: invalid UTF-8 at offset {exc.start}: {excerpt}", offset=exc.start) from None
    try:
        return _decoder.decode(text)
    except json.JSONDecodeError as exc:
        offset = exc.pos if isinstance(data, str) else len(text[: exc.pos].encode("utf-8", "surrogatepass"))
        message = f"{what}: invalid JSON ({exc.msg}) at offset {offset}: {_excerpt(text, exc.pos)}"
        raise DecodeError(message, offset=offset) from None
    except ValueError as exc:  # a rejected NaN / Infinity constant
        raise DecodeError(f"{what}: invalid JSON ({exc}): {_excerpt(text, 0)}") from None
    except RecursionError:
        raise DecodeError(f"{what}: JSON nested too deeply: {_excerpt(text, 0)}") from None


def _excerpt(text: str, pos: int) -> str:
    """Quote at most ``_EXCERPT_CHARS`` characters of ``text`` around ``pos``."""
    start = max(0, min(pos, len(text)) - _EXCERPT_CHARS // 2)
    piece = text[start : start + _EXCERPT_CHARS]
    prefix = "..." if start > 0 else ""
    suffix = "..." if start + _EXCERPT_CHARS < len(text) else ""
    return f"{prefix}{piece!r}{suffix}"


def decode_sample_result(body: bytes, content_type: Optional[str],
                         bounds: Optional[ResultBounds] = None) -> SampleResponse:
    """Decode a finished sample result from ``retrieve_future``.

    Protobuf (section 6) when ``content_type`` contains ``application/x-protobuf``, otherwise
    the legacy JSON form (section 6.4). Both give equal values for the same result.

    ``bounds`` (what the request can produce) refuses a larger answer before it is built.

    Raises:
        DecodeError: the body does not decode, or holds more than ``bounds`` allow.

    Example:
        >>> body = b'{"sequences":[{"tokens":[36],"stop_reason":"length"}]}'
        >>> decode_sample_result(body, "application/json").sequences[0].tokens
        [36]
    """
    bounds = bounds or ResultBounds()
    if content_type and PROTOBUF_CONTENT_TYPE in content_type.lower():
        return _proto.decode_sample_response(body, bounds)
    bounds.check_json_size(len(body), "sample result")
    value = loads(body, what="sample result")
    bounds.check_json_result(value, "sample result")
    return SampleResponse.from_json(value)
