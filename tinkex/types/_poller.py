"""Poller mode (protocol 4.10): the ``retrieve_futures`` request and answer.

One poller per (sampling session, clone id) asks for the completions since its cursor and
acknowledges the results it fetched; the answer lists finished and failed request ids.

Example:
    >>> answer = RetrieveFuturesResponse.from_json(
    ...     {"completions": [{"state": "finished", "request_id": "r1", "response_payload_uncompressed_size": 96}],
    ...      "cursor": 1})
    >>> answer.completions[0].is_finished, answer.cursor
    (True, 1)
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from ..errors import DecodeError
from ._wire import fields_to_json, get_field, require_mapping

__all__ = ["SamplingSessionTarget", "RetrieveFuturesRequest", "FutureCompletion", "RetrieveFuturesResponse"]

_NUMBER = (int, float)


def _strings(value: Any, what: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DecodeError(f"{what} must be a list of strings")
    return list(value)


def _int(mapping: Any, name: str, what: str, default: Any = None) -> Any:
    value = get_field(mapping, name, what, int, default)
    if isinstance(value, bool):  # pragma: no cover - defensive: get_field(kind=int) already rejects booleans
        raise DecodeError(f"{what}: field {name!r} must be an int, got {value!r}")
    return value


@attrs.frozen
class SamplingSessionTarget:
    """Whose completions a poller wants: a sampling session and its clone id (``seq_id // 10**9``)."""

    sampling_session_id: str
    cloned_sampler_id: int = 0
    type: str = attrs.field(default="sampling_session", init=False)

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> SamplingSessionTarget:
        what = "RetrieveFuturesRequest.target"
        mapping = require_mapping(data, what)
        return cls(
            sampling_session_id=get_field(mapping, "sampling_session_id", what, str),
            cloned_sampler_id=_int(mapping, "cloned_sampler_id", what, 0),
        )


@attrs.frozen
class RetrieveFuturesRequest:
    """Body of ``retrieve_futures``; ``timeout`` None is a long poll, ``0.0`` an ack-only poll."""

    target: SamplingSessionTarget
    prev_cursor: int = 0
    timeout: Optional[float] = None
    retrieved_request_ids: List[str] = attrs.field(factory=list)

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> RetrieveFuturesRequest:
        what = "RetrieveFuturesRequest"
        mapping = require_mapping(data, what)
        timeout = get_field(mapping, "timeout", what, _NUMBER, None)
        if isinstance(timeout, bool):  # pragma: no cover - defensive: get_field(kind=_NUMBER) already rejects booleans
            raise DecodeError(f"{what}: field 'timeout' must be a number, got {timeout!r}")
        retrieved = mapping.get("retrieved_request_ids")
        return cls(
            target=SamplingSessionTarget.from_json(get_field(mapping, "target", what)),
            prev_cursor=_int(mapping, "prev_cursor", what, 0),
            timeout=None if timeout is None else float(timeout),
            retrieved_request_ids=[] if retrieved is None else _strings(retrieved, f"{what}.retrieved_request_ids"),
        )


@attrs.frozen
class FutureCompletion:
    """One entry of a poll: ``state`` is ``finished`` (size known when the result is still held)
    or ``failed`` (``retrieve_future`` answers the error)."""

    state: str
    request_id: str
    response_payload_uncompressed_size: Optional[int] = None

    @property
    def is_finished(self) -> bool:
        return self.state == "finished"

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> FutureCompletion:
        what = "FutureCompletion"
        mapping = require_mapping(data, what)
        return cls(
            state=get_field(mapping, "state", what, str),
            request_id=get_field(mapping, "request_id", what, str),
            response_payload_uncompressed_size=_int(mapping, "response_payload_uncompressed_size", what),
        )


@attrs.frozen
class RetrieveFuturesResponse:
    """Answer of ``retrieve_futures``: completions since the poll's cursor and the new cursor."""

    completions: List[FutureCompletion] = attrs.field(factory=list)
    cursor: int = 0

    def to_json(self) -> Dict[str, Any]:
        return {"completions": [c.to_json() for c in self.completions], "cursor": self.cursor}

    @classmethod
    def from_json(cls, data: Any) -> RetrieveFuturesResponse:
        what = "RetrieveFuturesResponse"
        mapping = require_mapping(data, what)
        completions = get_field(mapping, "completions", what, list)
        entries = [FutureCompletion.from_json(entry) for entry in completions]
        return cls(completions=entries, cursor=_int(mapping, "cursor", what))
