"""The one place where an HTTP library's exception becomes a tinkex error.

``requests`` wraps ``urllib3`` errors, which wrap socket errors, in ways that differ between
versions (a read timeout inside ``iter_content`` arrives as ``requests.ConnectionError``
wrapping ``urllib3.ReadTimeoutError``, for example). So the mapper walks the whole chain of
causes and decides by exception *type*, never by searching message text, and describes the
cause in words a user can act on ("connection refused"), not in library class names.

Example:
    >>> error = library_error("POST", "http://127.0.0.1:9/api/v1/asample", ConnectionRefusedError(111, "x"))
    >>> type(error).__name__, error.message.split(" failed: ")[1]
    ('APIConnectionError', 'connection refused (no server is listening there)')
"""

from __future__ import annotations

import http.client
import socket
import ssl
from typing import Any, Iterator, List, Tuple, Type

import requests
import urllib3.exceptions
from urllib3.util.response import assert_header_parsing

from ..errors import APIConnectionError, APITimeoutError, DecodeError

__all__ = ["library_error", "is_timeout", "check_headers", "LIBRARY_ERRORS"]

#: What the HTTP layer catches around a send or a read; anything else is a bug and propagates.
LIBRARY_ERRORS: Tuple[Type[BaseException], ...] = (
    requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError,
    ValueError,
)

_TIMEOUTS: Tuple[Type[BaseException], ...] = (
    requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError,
)
# Connecting failed outright; urllib3 makes NewConnectionError a ConnectTimeoutError subclass, so
# it is checked before the timeouts.
_NOT_CONNECTED: Tuple[Type[BaseException], ...] = (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)

# (type, words), first match in the chain wins; the chain is walked outermost first.
_CAUSES: List[Tuple[Tuple[Type[BaseException], ...], str]] = [
    ((ConnectionRefusedError,), "connection refused (no server is listening there)"),
    ((socket.gaierror, urllib3.exceptions.NameResolutionError), "the host name could not be resolved"),
    ((ssl.SSLError, urllib3.exceptions.SSLError, requests.exceptions.SSLError), "TLS handshake failed"),
    ((requests.exceptions.ProxyError, urllib3.exceptions.ProxyError), "the proxy refused the connection"),
    ((requests.exceptions.TooManyRedirects,), "too many redirects"),
    ((urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout), "timed out connecting"),
    ((urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout, socket.timeout, TimeoutError),
     "timed out waiting for the answer"),
    ((ConnectionResetError,), "the connection was reset by the server"),
    ((BrokenPipeError,), "the server closed the connection while the request was sent"),
    ((urllib3.exceptions.ProtocolError, ConnectionError, http.client.HTTPException),
     "the server closed the connection without an answer"),
    ((urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError), "the answer could not be "
                                                                                 "decompressed"),
    ((urllib3.exceptions.HeaderParsingError, requests.exceptions.InvalidHeader), "malformed response headers"),
    ((requests.exceptions.ChunkedEncodingError,), "the answer was cut short"),
]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: ``args``, ``reason``, ``__cause__``, ``__context__``."""
    seen: List[int] = []
    pending: List[Any] = [exc]
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.append(id(current))
        yield current
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend([getattr(current, "reason", None), current.__cause__, current.__context__])


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` (or something it wraps) is a timeout rather than a refused connection."""
    chain = list(_chain(exc))
    if any(isinstance(e, _NOT_CONNECTED) for e in chain):
        return False
    return any(isinstance(e, _TIMEOUTS) for e in chain)


def describe(exc: BaseException) -> str:
    """The cause of ``exc`` in words."""
    chain = list(_chain(exc))
    for kinds, words in _CAUSES:
        if any(isinstance(e, kinds) for e in chain):
            return words
    return f"{type(exc).__name__}"


def library_error(what: str, url: str, exc: BaseException) -> APIConnectionError:
    """The tinkex error for ``exc``, raised by ``requests``/``urllib3``/a socket during ``what`` on ``url``."""
    cls = APITimeoutError if is_timeout(exc) else APIConnectionError
    return cls(f"{what} {url} failed: {describe(exc)}", url=url)


def check_headers(raw: Any, url: str) -> None:
    """Fail fast on response headers the parser could not read whole.

    A bare CR inside a header ends the parsed headers there; ``http.client`` keeps the rest as
    unparsed data, so a ``Content-Length`` after it is lost and the body would be read until the
    server closes the connection (often never: the call then hangs until its deadline).
    urllib3 only logs this; here it is a :class:`DecodeError` at once.

    Args:
        raw: the urllib3 response (its ``http.client`` response holds the parsed headers).
        url: for the message.
    """
    message = getattr(getattr(raw, "_original_response", None), "msg", None)
    if message is None:
        return
    try:
        assert_header_parsing(message)
    except urllib3.exceptions.HeaderParsingError:
        raise DecodeError(f"{url} answered malformed response headers (a bare CR or a line that is not a "
                          f"header); the answer is not read") from None
