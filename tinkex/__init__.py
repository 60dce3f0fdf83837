"""tinkex: a synchronous, thread-pool Python SDK for the Tinker sampling API.

Example:
    >>> import tinkex
    >>> tinkex.__version__  # doctest: +SKIP
    '0.1.0'
"""

import logging

from . import errors, types
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BillingError,
    ClientClosedError,
    ConflictError,
    DecodeError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    PromiseExpiredError,
    RateLimitError,
    RequestFailedError,
    TinkexError,
    UnprocessableEntityError,
    ValidationError,
)

__all__ = [
    "__version__",
    "errors",
    "types",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BillingError",
    "ClientClosedError",
    "ConflictError",
    "DecodeError",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "PromiseExpiredError",
    "RateLimitError",
    "RequestFailedError",
    "TinkexError",
    "UnprocessableEntityError",
    "ValidationError",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
