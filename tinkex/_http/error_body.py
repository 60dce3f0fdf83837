"""A non-2xx answer as its typed error: the body excerpt, readable, capped and scrubbed of the key.

The excerpt goes into messages, logs and ``APIStatusError.body``: it is decoded whatever its
encoding (UTF-16 bodies included), stripped of control characters, capped at
``BODY_EXCERPT_CHARS``, and a JSON body's strings are cleaned of the credential in any escape.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Mapping, Optional, Protocol

from .._clock import SYSTEM_CLOCK
from .._config import redact_text
from .._policy import parse_retry_after
from .._wire import codec as _codec
from ..errors import APIStatusError, TinkexError, status_error_class

__all__ = ["BODY_EXCERPT_CHARS", "status_error"]

BODY_EXCERPT_CHARS = 500


class Answer(Protocol):
    """What an error is built from: a read answer or an event stream that did not open."""

    @property
    def status(self) -> int: ...

    @property
    def content(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def _excerpt(content: bytes, secret: str) -> str:
    text = redact_text(_clean_json(_readable(content[: BODY_EXCERPT_CHARS * 4]), secret), secret)
    if len(text) > BODY_EXCERPT_CHARS:
        text = text[:BODY_EXCERPT_CHARS] + "…"
    return text


_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]+")


def _readable(content: bytes) -> str:
    """An error body as text fit for a message: UTF-16 (with a BOM, or by its NULs) decoded as
    such, and control characters (NULs above all) dropped."""
    if content.startswith(_UTF16_BOMS) or (len(content) >= 4 and content.count(0) * 3 >= len(content)):
        encoding = "utf-16" if content.startswith(_UTF16_BOMS) else (
            "utf-16-le" if content[1:2] == b"\x00" else "utf-16-be")
        text = content[: len(content) & ~1].decode(encoding, errors="replace")
    else:
        text = content.decode("utf-8", errors="replace")
    return _CONTROL.sub("", text)


def _clean_json(text: str, secret: str) -> str:
    """A JSON body whose strings hold the key (in any escape, ``\\u0074ml-...`` included) or control
    characters (``\\u0000``), re-written with those removed; any other text unchanged. What the
    error's ``detail`` decodes from the excerpt must be as clean as the excerpt."""
    if text[:1] not in ("{", "["):
        return text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    dirty = []

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            cleaned = redact_text(_CONTROL.sub("", item), secret)
            if cleaned != item:
                dirty.append(item)
            return cleaned
        if isinstance(item, list):
            return [clean(part) for part in item]
        if isinstance(item, dict):
            return {clean(key): clean(part) for key, part in item.items()}
        return item

    cleaned = clean(value)
    return json.dumps(cleaned, ensure_ascii=False) if dirty else text


def _request_id_of(content: bytes, headers: Mapping[str, str]) -> Optional[str]:
    header = headers.get("x-request-id")
    if header:
        return header
    if content[:1] == b"{" and len(content) < 65536:
        try:
            value = _codec.loads(content, what="error body")
        except TinkexError:
            return None
        if isinstance(value, dict) and isinstance(value.get("request_id"), str):
            return str(value["request_id"])
    return None


def status_error(response: Answer, secret: str = "") -> APIStatusError:
    """Build the typed error for a non-2xx answer, its body excerpt capped and scrubbed."""
    excerpt = _excerpt(response.content, secret)
    cls = status_error_class(response.status)
    return cls(
        f"Error code: {response.status} - {excerpt}" if excerpt else f"Error code: {response.status}",
        status_code=response.status,
        body=excerpt,
        request_id=_request_id_of(response.content, response.headers),
        retry_after=parse_retry_after(response.headers, SYSTEM_CLOCK.wall()),
    )
