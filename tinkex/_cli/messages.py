"""The one line the ``tinkex`` command prints for an error: the server's own words, what to do
next, and the request id; the library's argument names turned into the command's options."""

from __future__ import annotations

import re
from typing import List, Optional, Set

from ..errors import APIConnectionError, APIError, APIStatusError, APITimeoutError, ValidationError

__all__ = ["describe"]


_AUTH_HINT = "check TINKER_API_KEY or --api-key"
_MODELS_HINT = "`tinkex models` lists the models this server offers"
_NO_KEY = "no API key: set TINKER_API_KEY or pass --api-key"
_UNKNOWN_MODEL = re.compile(r"model", re.IGNORECASE)
_NOT_KNOWN = re.compile(r"unknown|not found|no such|not available|unsupported|not supported", re.IGNORECASE)
# The library's words for its constructor arguments, in the command's words.
_CLI_WORDS = (
    (re.compile(r"by passing api_key to the client"), "by passing --api-key"),
    (re.compile(r"\bpass (\w+)=\.\.\."), lambda match: "pass --" + match.group(1).replace("_", "-")),
    (re.compile(r"\b[Tt]he api_key client option"), "An API key"),
    (re.compile(r"\bapi_key\b"), "API key"),
)


def describe(exc: BaseException) -> str:
    """One line for the user: the server's own words, what to do next, the request id."""
    if isinstance(exc, APIStatusError):
        message = _status_message(exc)
    elif isinstance(exc, APIConnectionError) and not isinstance(exc, APITimeoutError) and _refused(exc):
        message = f"no server at {_service_url(exc.url)} — start one with `tinkex serve` or pass --local"
    elif isinstance(exc, ValidationError) and exc.field == "api_key" and exc.value is None:
        message = _NO_KEY
    else:
        message = _cli_words(str(exc) or type(exc).__name__)
    request_id = getattr(exc, "request_id", None)
    if isinstance(exc, APIError) and request_id and request_id not in message:
        message += f" (request id: {request_id})"
    if "TINKER_API_KEY" in message and "--local" not in message:
        message += " (or pass --local to use a local server)"
    return " ".join(message.split())  # one line, whatever the server wrote


def _status_message(exc: APIStatusError) -> str:
    detail = exc.detail or f"the server answered HTTP {exc.status_code}"
    message = f"{detail} (HTTP {exc.status_code}"
    if exc.request_id:
        message += f", request id: {exc.request_id}"
    message += ")"
    hint = _status_hint(exc.status_code, detail)
    return f"{message} — {hint}" if hint else message


def _status_hint(status: int, detail: str) -> Optional[str]:
    if status in (401, 403):
        return _AUTH_HINT
    if 400 <= status < 500 and _UNKNOWN_MODEL.search(detail) and _NOT_KNOWN.search(detail):
        return _MODELS_HINT
    return None


def _refused(exc: BaseException) -> bool:
    """Whether nothing listens at the URL: a refused connection anywhere in the error's chain."""
    seen: Set[int] = set()
    pending: List[object] = [exc]
    while pending:
        error = pending.pop()
        if not isinstance(error, BaseException) or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ConnectionRefusedError):
            return True
        pending.extend([error.__cause__, error.__context__, getattr(error, "reason", None), *error.args])
    text = str(exc)
    return "refused" in text.lower() or "NewConnectionError" in text


def _service_url(url: Optional[str]) -> str:
    return url.split("/api/v1/", 1)[0] if url else "the configured URL"


def _cli_words(message: str) -> str:
    for pattern, replacement in _CLI_WORDS:
        message = pattern.sub(replacement, message)
    return message


