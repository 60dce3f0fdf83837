"""The tinkex exception tree.

Every error tinkex raises derives from :class:`TinkexError` (also importable under the
official SDK's name, :data:`TinkerError`: one class, two names); ``requests`` and
``urllib3`` exceptions never escape the public API::

    TinkexError
    ├── APIError                      anything that went wrong talking to the service
    │   ├── APIStatusError            a non-2xx answer (status_code, body, detail, request_id, retry_after)
    │   │   ├── BadRequestError            400
    │   │   ├── AuthenticationError        401
    │   │   ├── BillingError               402
    │   │   ├── PermissionDeniedError      403
    │   │   ├── NotFoundError              404
    │   │   ├── ConflictError              409
    │   │   ├── PromiseExpiredError        410
    │   │   ├── UnprocessableEntityError   422
    │   │   ├── RateLimitError             429
    │   │   └── InternalServerError        >= 500
    │   ├── APIConnectionError        no usable answer (url)
    │   │   └── APITimeoutError       ... within the time allowed (also a builtin TimeoutError)
    │   └── RequestFailedError        the server ran the request and it failed (request_id, category)
    ├── ValidationError               bad input, named by field and value (also a ValueError)
    ├── DecodeError                   a response that cannot be decoded (offset; also a ValueError)
    └── ClientClosedError             a call on a closed client (also a RuntimeError)

Context lives in attributes, never only in the message, and every exception survives a
pickle round trip (so errors cross process pools intact).

Example:
    >>> try:
    ...     raise RateLimitError("slow down", status_code=429, retry_after=1.0)
    ... except APIStatusError as exc:
    ...     print(exc.status_code, exc.retry_after)
    429 1.0
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Type

__all__ = [
    "TinkexError",
    "TinkerError",
    "APIResponseValidationError",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "BillingError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PromiseExpiredError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "APIConnectionError",
    "APITimeoutError",
    "RequestFailedError",
    "ValidationError",
    "DecodeError",
    "ClientClosedError",
    "status_error_class",
]


def _rebuild(cls: Type[TinkexError], state: Dict[str, Any]) -> TinkexError:
    error = cls.__new__(cls)
    BaseException.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


class TinkexError(Exception):
    """Root of every tinkex error.

    Args:
        message: a human-readable explanation (never contains the API key).

    Example:
        >>> isinstance(ValidationError("x", field="top_p", value=2), TinkexError)
        True
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), dict(self.__dict__)))


TinkerError = TinkexError
"""The official SDK's name for the root: the same class, so ``except`` and ``isinstance`` work
with either name."""


class APIError(TinkexError):
    """Something went wrong talking to the service.

    Attributes:
        request_id: the server's request id when one is known.
    """

    def __init__(self, message: str, *, request_id: Optional[str] = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class APIStatusError(APIError):
    """The server answered with a non-2xx status.

    Attributes:
        status_code: the HTTP status.
        body: a capped excerpt of the response body (text).
        retry_after: seconds the server asked to wait, if it said.
        fatal: True when retrying cannot help (a fatal answer while polling a future).

    Example:
        >>> APIStatusError("Error code: 418", status_code=418).status_code
        418
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Optional[str] = None,
        request_id: Optional[str] = None,
        retry_after: Optional[float] = None,
        fatal: bool = False,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        self.fatal = fatal

    @property
    def detail(self) -> Optional[str]:
        """The server's own explanation: the body's ``detail`` (or ``error`` / ``message``) text,
        else the body itself; None when the body is empty.

        Example:
            >>> BadRequestError("Error code: 400", status_code=400, body='{"detail": "unknown model"}').detail
            'unknown model'
        """
        text = (self.body or "").strip()
        if not text:
            return None
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        return _detail_of(parsed) or text


def _detail_of(parsed: Any) -> Optional[str]:
    """The human text in a JSON error body: ``{"detail": ...}`` (a string, or a list of
    ``{"msg": ...}`` items), ``{"error": ...}`` or ``{"message": ...}``."""
    if not isinstance(parsed, dict):
        return None
    for key in ("detail", "error", "message"):
        value = parsed.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, dict):
            return _detail_of(value)
        if isinstance(value, list) and value:
            parts = [item.get("msg") if isinstance(item, dict) else item for item in value]
            return "; ".join(str(part) for part in parts if part)
    return None


class BadRequestError(APIStatusError):
    """HTTP 400."""


class AuthenticationError(APIStatusError):
    """HTTP 401: the API key was missing or refused."""


class BillingError(APIStatusError):
    """HTTP 402: the account's billing status pauses the job."""


class PermissionDeniedError(APIStatusError):
    """HTTP 403."""


class NotFoundError(APIStatusError):
    """HTTP 404."""


class ConflictError(APIStatusError):
    """HTTP 409."""


class PromiseExpiredError(APIStatusError):
    """HTTP 410 while polling: the server forgot the request; it is resubmitted with a new seq_id."""


class UnprocessableEntityError(APIStatusError):
    """HTTP 422."""


class RateLimitError(APIStatusError):
    """HTTP 429: the server asked the client to slow down."""


class InternalServerError(APIStatusError):
    """HTTP 5xx."""


class APIConnectionError(APIError):
    """No usable answer arrived (refused, reset, dropped or unreadable).

    Attributes:
        url: the URL that was being called.
    """

    def __init__(self, message: str, *, url: Optional[str] = None, request_id: Optional[str] = None) -> None:
        super().__init__(message, request_id=request_id)
        self.url = url


class APITimeoutError(APIConnectionError, TimeoutError):
    """No answer within the time allowed (a socket timeout or a call deadline).

    Example:
        >>> isinstance(APITimeoutError("late", url="http://x"), TimeoutError)
        True
    """


class RequestFailedError(APIError):
    """The server ran the request and reported it failed; never retried.

    Attributes:
        category: ``"user"``, ``"server"`` or ``"unknown"``.
    """

    def __init__(self, message: str, *, request_id: Optional[str] = None, category: str = "unknown") -> None:
        super().__init__(message, request_id=request_id)
        self.category = category

    @property
    def is_user_error(self) -> bool:
        return self.category == "user"


class ValidationError(TinkexError, ValueError):
    """Bad input, raised before anything is sent.

    Attributes:
        field: the name of the offending field.
        value: the offending value (never the API key).

    Example:
        >>> ValidationError("top_p must be in (0, 1], got 2", field="top_p", value=2).field
        'top_p'
    """

    def __init__(self, message: str, *, field: Optional[str] = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


class DecodeError(TinkexError, ValueError):
    """A response body that cannot be decoded.

    Attributes:
        offset: the byte offset where decoding failed, when known.
    """

    def __init__(self, message: str, *, offset: Optional[int] = None) -> None:
        super().__init__(message)
        self.offset = offset


APIResponseValidationError = DecodeError
"""The official SDK's name for an answer that does not decode: tinkex's :class:`DecodeError`."""


class ClientClosedError(TinkexError, RuntimeError):
    """A call on a client after ``close()``."""


_STATUS_CLASSES: Dict[int, Type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: BillingError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    410: PromiseExpiredError,
    422: UnprocessableEntityError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> Type[APIStatusError]:
    """Return the exception class for an HTTP status (``InternalServerError`` for 5xx)."""
    if status_code >= 500:
        return InternalServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)
