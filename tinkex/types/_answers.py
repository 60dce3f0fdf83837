"""What the server answers while a sample runs: the promise, future answers and stream chunks."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from ..errors import DecodeError
from ._sampling import QueueState, RequestErrorCategory, StopReason, _WireEnum
from ._wire import fields_to_json, get_field, require_mapping

__all__ = [
    "SamplePromise",
    "TryAgainResponse",
    "RequestFailedResponse",
    "CompleteMetadataResponse",
    "StreamChunkKind",
    "SampleStreamChunk",
]


@attrs.frozen
class SamplePromise:
    """The answer to ``asample``: a handle to poll with ``retrieve_future``."""

    request_id: str
    model_id: Optional[str] = None
    sample_sequence_ids: Optional[List[str]] = None

    @classmethod
    def from_json(cls, data: Any) -> SamplePromise:
        mapping = require_mapping(data, "SamplePromise")
        ids = get_field(mapping, "sample_sequence_ids", "SamplePromise", list, None)
        if ids is not None and not all(isinstance(item, str) for item in ids):
            raise DecodeError("SamplePromise: sample_sequence_ids must be strings")
        return cls(
            request_id=get_field(mapping, "request_id", "SamplePromise", str),
            model_id=get_field(mapping, "model_id", "SamplePromise", str, None),
            sample_sequence_ids=ids,
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "request_id": self.request_id, "model_id": self.model_id, "sample_sequence_ids": self.sample_sequence_ids,
        }


@attrs.frozen
class TryAgainResponse:
    """A pending future: poll again. ``queue_state`` says why it waits."""

    request_id: str
    queue_state: QueueState = QueueState.UNKNOWN
    queue_state_reason: Optional[str] = None
    type: str = attrs.field(default="try_again", init=False)

    @classmethod
    def from_json(cls, data: Any) -> TryAgainResponse:
        mapping = require_mapping(data, "TryAgainResponse")
        kind = mapping.get("type")
        if not isinstance(kind, str) or kind.lower() != "try_again":
            raise DecodeError(f"TryAgainResponse: type must be 'try_again', got {kind!r}")
        return cls(
            request_id=get_field(mapping, "request_id", "TryAgainResponse", str),
            queue_state=QueueState.parse(mapping.get("queue_state")),
            queue_state_reason=get_field(mapping, "queue_state_reason", "TryAgainResponse", str, None),
        )

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)


@attrs.frozen
class RequestFailedResponse:
    """A failed future: ``error`` is the server's message."""

    error: str
    category: RequestErrorCategory = RequestErrorCategory.UNKNOWN

    @classmethod
    def from_json(cls, data: Any) -> RequestFailedResponse:
        mapping = require_mapping(data, "RequestFailedResponse")
        return cls(
            error=get_field(mapping, "error", "RequestFailedResponse", str),
            category=RequestErrorCategory.parse(mapping.get("category")),
        )

    def to_json(self) -> Dict[str, Any]:
        return {"error": self.error, "category": self.category.value}


@attrs.frozen
class CompleteMetadataResponse:
    """The result is ready and ``response_payload_size`` bytes long; re-poll for it."""

    response_payload_size: int
    status: str = attrs.field(default="complete_metadata", init=False)

    @classmethod
    def from_json(cls, data: Any) -> CompleteMetadataResponse:
        mapping = require_mapping(data, "CompleteMetadataResponse")
        return cls(response_payload_size=get_field(mapping, "response_payload_size", "CompleteMetadataResponse", int))

    def to_json(self) -> Dict[str, Any]:
        return {"status": "complete_metadata", "response_payload_size": self.response_payload_size}


class StreamChunkKind(_WireEnum):
    """What a stream chunk holds: a token, the end of a sequence, or a failure."""

    TOKEN = "token"
    DONE = "done"
    ERROR = "error"


@attrs.frozen
class SampleStreamChunk:
    """One event of ``sample_stream``.

    Example:
        >>> SampleStreamChunk(kind=StreamChunkKind.TOKEN, token_id=72, token="H", index=0).is_token
        True
    """

    kind: StreamChunkKind
    sequence_index: int = 0
    index: Optional[int] = None
    token_id: Optional[int] = None
    token: Optional[str] = None
    logprob: Optional[float] = None
    finish_reason: Optional[StopReason] = None
    total_tokens: Optional[int] = None
    message: Optional[str] = None
    category: Optional[RequestErrorCategory] = None

    @property
    def is_token(self) -> bool:
        return self.kind is StreamChunkKind.TOKEN

    @property
    def is_done(self) -> bool:
        return self.kind is StreamChunkKind.DONE

    def to_json(self) -> Dict[str, Any]:
        """The ``data:`` object of this chunk's SSE event (protocol 9.2); the event name is ``kind``.

        Example:
            >>> SampleStreamChunk(kind=StreamChunkKind.DONE, finish_reason=StopReason.LENGTH, total_tokens=1).to_json()
            {'finish_reason': 'length', 'total_tokens': 1, 'sequence_index': 0}
        """
        if self.kind is StreamChunkKind.TOKEN:
            return {"index": self.index, "token_id": self.token_id, "token": self.token, "logprob": self.logprob,
                    "sequence_index": self.sequence_index}  # fmt: skip
        if self.kind is StreamChunkKind.DONE:
            reason = None if self.finish_reason is None else self.finish_reason.value
            return {"finish_reason": reason, "total_tokens": self.total_tokens, "sequence_index": self.sequence_index}
        category = RequestErrorCategory.UNKNOWN if self.category is None else self.category
        return {"message": self.message, "category": category.value}

    @classmethod
    def from_event(cls, event: str, data: Any) -> SampleStreamChunk:
        """Decode one SSE event (``event`` name, parsed ``data``); a missing ``sequence_index`` is 0.

        Raises:
            DecodeError: an unknown event name or a field of the wrong type.
        """
        try:
            kind = StreamChunkKind(event)
        except ValueError:
            raise DecodeError(f"SampleStreamChunk: unknown event {event!r}") from None
        what = f"SampleStreamChunk({event})"
        mapping = require_mapping(data, what)
        sequence_index = get_field(mapping, "sequence_index", what, int, 0)
        if kind is StreamChunkKind.TOKEN:
            return cls(kind=kind, sequence_index=sequence_index, index=get_field(mapping, "index", what, int),
                       token_id=get_field(mapping, "token_id", what, int),
                       token=get_field(mapping, "token", what, str, None),
                       logprob=get_field(mapping, "logprob", what, (int, float), None))  # fmt: skip
        if kind is StreamChunkKind.DONE:
            reason = get_field(mapping, "finish_reason", what, str)
            try:
                finish_reason = StopReason(reason)
            except ValueError:
                raise DecodeError(f"{what}: unknown finish_reason {reason!r}") from None
            return cls(kind=kind, sequence_index=sequence_index, finish_reason=finish_reason,
                       total_tokens=get_field(mapping, "total_tokens", what, int))  # fmt: skip
        return cls(kind=kind, message=get_field(mapping, "message", what, str),
                   category=RequestErrorCategory.parse(mapping.get("category")))  # fmt: skip
