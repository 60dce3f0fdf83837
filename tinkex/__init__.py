"""tinkex: a synchronous, thread-pool Python SDK for the Tinker sampling API.

Example:
    >>> import tinkex
    >>> tinkex.__version__  # doctest: +SKIP
    '0.1.0'
"""

import logging

from . import errors, tokenizers, types
from ._config import Config, __version__
from ._policy import PollPolicy, RetryConfig
from ._sampling.future import SampleFuture
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
from .queue_state import QueueStateLogger, QueueStateObserver
from .sampling_client import SamplingClient
from .service_client import ServiceClient
from .telemetry import Telemetry, TelemetrySnapshot

__all__ = [
    "__version__",
    "errors",
    "tokenizers",
    "types",
    "Config",
    "PollPolicy",
    "QueueStateLogger",
    "QueueStateObserver",
    "RetryConfig",
    "SampleFuture",
    "SamplingClient",
    "ServiceClient",
    "Telemetry",
    "TelemetrySnapshot",
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
