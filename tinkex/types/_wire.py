"""JSON wire helpers shared by every value type: omit-None encoding and strict decoding."""

from __future__ import annotations

import enum
from typing import Any, Callable, Dict, List, Mapping, Optional, Type, TypeVar

import attrs

from ..errors import DecodeError

T = TypeVar("T")

_ABSENT = object()


def to_wire(value: Any) -> Any:
    """Encode an attrs value, list or scalar for JSON: None fields omitted, enums as values."""
    if attrs.has(type(value)):
        encode = getattr(value, "to_json", None)
        if encode is not None:
            return encode()
        return fields_to_json(value)
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    if isinstance(value, dict):
        return {key: to_wire(item) for key, item in value.items() if item is not None}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def fields_to_json(value: Any) -> Dict[str, Any]:
    """Encode an attrs instance field by field, in declaration order, leaving out None."""
    out: Dict[str, Any] = {}
    for field in attrs.fields(type(value)):
        if field.metadata.get("wire") is False:
            continue
        item = getattr(value, field.name)
        if item is not None:
            out[field.name] = to_wire(item)
    return out


def require_mapping(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise DecodeError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def get_field(
    data: Mapping[str, Any],
    name: str,
    what: str,
    kind: Any = None,
    default: Any = _ABSENT,
    convert: Optional[Callable[[Any], Any]] = None,
) -> Any:
    """Read ``name`` from a decoded JSON object, checking presence and type.

    Args:
        data: the decoded JSON object.
        name: the field name.
        what: the type being decoded, for messages.
        kind: a type or tuple of types the value must be (None = anything).
        default: returned when the field is absent or null; omit to make it required.
        convert: applied to a present, type-checked value.

    Raises:
        DecodeError: naming the field when it is missing or of the wrong type.
    """
    value = data.get(name)
    if value is None:
        if default is _ABSENT:
            raise DecodeError(f"{what}: missing required field {name!r}")
        return default
    if kind is not None and not _is_kind(value, kind):
        raise DecodeError(f"{what}: field {name!r} has the wrong type ({type(value).__name__})")
    return convert(value) if convert is not None else value


def _is_kind(value: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    if float in kinds and isinstance(value, int):
        return True
    return isinstance(value, kinds)


def decode_list(value: Any, what: str, item: Callable[[Any], T]) -> List[T]:
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list, got {type(value).__name__}")
    return [item(entry) for entry in value]


def int_list(value: Any, what: str) -> List[int]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise DecodeError(f"{what}: expected a list of integers")
    return value


def optional_float_list(value: Any, what: str) -> List[Any]:  # numbers or None (JSON as sent)
    if not isinstance(value, list):
        raise DecodeError(f"{what}: expected a list of numbers")
    for entry in value:
        if entry is not None and (isinstance(entry, bool) or not isinstance(entry, (int, float))):
            raise DecodeError(f"{what}: expected numbers or null, got {type(entry).__name__}")
    return [None if v is None else float(v) for v in value]


def decode_object(cls: Type[T], data: Any) -> T:
    """Decode a flat attrs class whose fields carry a ``kind`` in their metadata."""
    what = cls.__name__
    mapping = require_mapping(data, what)
    kwargs: Dict[str, Any] = {}
    for field in attrs.fields(cls):  # type: ignore[arg-type]
        if not field.init or field.metadata.get("wire") is False:
            continue
        default: Any = _ABSENT if field.default is attrs.NOTHING else field.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        kwargs[field.name] = get_field(
            mapping, field.name, what, field.metadata.get("kind"), default, field.metadata.get("decode")
        )
    return cls(**kwargs)
