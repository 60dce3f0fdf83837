"""tinkex: a synchronous, thread-pool Python SDK for the Tinker sampling API.

The sampling side of the official ``tinker`` package is here under the same names (the value
types, ``TinkerError`` and the ``APIError`` family, ``APIFuture``), so a script written for it
runs after ``import tinkex as tinker``; the README's compatibility table lists every name.

Example:
    >>> import tinkex as tinker
    >>> tinker.SamplingParams(max_tokens=4).max_tokens, tinker.TinkerError is tinker.TinkexError
    (4, True)
"""

import logging

from . import errors, tokenizers, types
from ._config import Config, __version__
from ._policy import PollPolicy, RetryConfig
from ._sampling.future import APIFuture, SampleFuture
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
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
    TinkerError,
    TinkexError,
    UnprocessableEntityError,
    ValidationError,
)
from .queue_state import QueueStateLogger, QueueStateObserver
from .sampling_client import SamplingClient
from .service_client import ServiceClient
from .telemetry import Telemetry, TelemetrySnapshot
from .types import (
    EncodedTextChunk,
    ModelInput,
    ModelInputChunk,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    StopReason,
    TensorData,
    TensorDtype,
)

__title__ = "tinkex"

__all__ = [
    "__title__",
    "__version__",
    "errors",
    "tokenizers",
    "types",
    "Config",
    "APIFuture",
    "PollPolicy",
    "QueueStateLogger",
    "QueueStateObserver",
    "RetryConfig",
    "SampleFuture",
    "SamplingClient",
    "ServiceClient",
    "Telemetry",
    "TelemetrySnapshot",
    "EncodedTextChunk",
    "ModelInput",
    "ModelInputChunk",
    "SampledSequence",
    "SampleRequest",
    "SampleResponse",
    "SamplingParams",
    "StopReason",
    "TensorData",
    "TensorDtype",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
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
    "TinkerError",
    "TinkexError",
    "UnprocessableEntityError",
    "ValidationError",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
