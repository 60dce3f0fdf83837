"""JSON wire helpers shared by every value type: omit-None encoding and strict decoding."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

import attrs

from ..errors import DecodeError

T = TypeVar("T")

_ABSENT = object()


#: Values JSON takes as they are: checked first, as nearly every field holds one.
_PLAIN = frozenset({int, float, str, bool})


def to_wire(value: Any) -> Any:
    """Encode an attrs value, list or scalar for JSON: None fields omitted, enums as values."""
    if type(value) in _PLAIN:
        return value
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
    for name in _wire_names(type(value)):
        item = getattr(value, name)
        if item is not None:
            out[name] = to_wire(item)
    return out


def evolve(value: T, **changes: Any) -> T:
    """``attrs.evolve`` with the class's init fields looked up once per class (it runs per sample).

    Example:
        >>> import attrs
        >>> @attrs.frozen
        ... class Point:
        ...     x: int
        ...     y: int = 0
        >>> evolve(Point(1, 2), y=5)
        Point(x=1, y=5)
    """
    cls = type(value)
    for name, alias in _init_fields(cls):
        if alias not in changes:
            changes[alias] = getattr(value, name)
    return cls(**changes)


# Per attrs class (a handful), filled on first use; a dict read or insert is atomic under the GIL.
_INIT_FIELDS: Dict[type, Tuple[Any, ...]] = {}
_WIRE_NAMES: Dict[type, Tuple[Any, ...]] = {}


def _per_class(cache: Dict[type, Tuple[Any, ...]], cls: type, pick: Callable[[Any], Any]) -> Tuple[Any, ...]:
    """``pick(field)`` of every field of ``cls`` it does not skip (None), worked out once per class."""
    found = cache.get(cls)
    if found is None:
        found = cache[cls] = tuple(item for item in map(pick, attrs.fields(cls)) if item is not None)
    return found


def _init_fields(cls: type) -> Tuple[Tuple[str, str], ...]:
    return _per_class(_INIT_FIELDS, cls, lambda field: (field.name, field.alias) if field.init else None)


def _wire_names(cls: type) -> Tuple[str, ...]:
    """The fields of ``cls`` that go on the wire, in declaration order."""
    return _per_class(_WIRE_NAMES, cls, lambda field: None if field.metadata.get("wire") is False else field.name)


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
