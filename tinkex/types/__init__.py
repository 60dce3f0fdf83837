"""Value types of the Tinker sampling API, with the official SDK's names and JSON forms.

Every type is an immutable attrs class; ``to_json()`` gives the wire form (None fields left
out, defaults and the ``type`` discriminator sent) and ``from_json()`` decodes strictly,
ignoring unknown fields and naming any missing required one in a :class:`tinkex.DecodeError`.

Example:
    >>> from tinkex import types
    >>> types.ModelInput.from_ints([1, 2, 3]).to_json()
    {'chunks': [{'tokens': [1, 2, 3], 'type': 'encoded_text'}]}
"""

from ._answers import (
    CompleteMetadataResponse,
    RequestFailedResponse,
    SamplePromise,
    SampleStreamChunk,
    StreamChunkKind,
    TryAgainResponse,
)
from ._arrays import TensorDtype, TopkArrays
from ._model_input import EncodedTextChunk, ImageAssetPointerChunk, ImageChunk, ModelInput, ModelInputChunk
from ._poller import FutureCompletion, RetrieveFuturesRequest, RetrieveFuturesResponse, SamplingSessionTarget
from ._sampling import (
    QueueState,
    RequestErrorCategory,
    SampledSequence,
    SampleRequest,
    SampleResponse,
    SamplingParams,
    StopReason,
    TopkLogprobs,
)
from ._session import (
    CancelFutureRequest,
    ClientConfig,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    DynamicConfig,
    FinishSessionRequest,
    FutureRetrieveRequest,
    GetSamplerResponse,
    JoinSamplingSessionRequest,
    JoinSamplingSessionResponse,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SupportedModel,
)
from ._tensor import PromptAltTokens, TensorData

__all__ = [
    "EncodedTextChunk",
    "ImageAssetPointerChunk",
    "ImageChunk",
    "ModelInput",
    "ModelInputChunk",
    "CompleteMetadataResponse",
    "PromptAltTokens",
    "TensorData",
    "FutureCompletion",
    "RetrieveFuturesRequest",
    "RetrieveFuturesResponse",
    "SamplingSessionTarget",
    "QueueState",
    "RequestErrorCategory",
    "RequestFailedResponse",
    "SampledSequence",
    "SamplePromise",
    "SampleRequest",
    "SampleResponse",
    "SampleStreamChunk",
    "SamplingParams",
    "StopReason",
    "StreamChunkKind",
    "TopkLogprobs",
    "TryAgainResponse",
    "CancelFutureRequest",
    "ClientConfig",
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "CreateSessionRequest",
    "CreateSessionResponse",
    "DynamicConfig",
    "FinishSessionRequest",
    "FutureRetrieveRequest",
    "GetSamplerResponse",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "ServerCapabilities",
    "SessionHeartbeatRequest",
    "SupportedModel",
    "TensorDtype",
    "TopkArrays",
]
