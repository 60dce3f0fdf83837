"""Answering ``retrieve_future`` (long poll, protocol 4.9) and ``retrieve_futures`` (poller, 4.10).

A pending poll is held on the record's completion future for up to ``poll_hold_s`` and then
answered ``try_again`` with the queue state; a finished one gets its result (protobuf when the
``Accept`` header allows it, else the legacy JSON form), or ``complete_metadata`` first when
the client allows it and the payload is larger than ``metadata_threshold_bytes``. A delivered
result stays retrievable for ``result_retention_s``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Mapping, NamedTuple, Optional

from .._wire.codec import dumps
from .._wire.proto import encode_sample_response
from ..types import (
    CompleteMetadataResponse,
    FutureCompletion,
    FutureRetrieveRequest,
    QueueState,
    RequestErrorCategory,
    RequestFailedResponse,
    RetrieveFuturesRequest,
    RetrieveFuturesResponse,
    TryAgainResponse,
)
from ._engine import Engine
from ._poller import PollerLog
from ._problems import bad_request, gone
from ._proto_extras import encode_extras
from .scheduler import CLONE_STRIDE
from .store import DONE, RequestRecord, SamplingSession

__all__ = ["Answer", "retrieve_future", "retrieve_futures", "encoded_result", "PROTOBUF", "JSON"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class Answer(NamedTuple):
    """A finished HTTP answer: body bytes and their content type (status is always 200)."""

    body: bytes
    content_type: str


def encoded_result(record: RequestRecord, protobuf: bool) -> bytes:
    """The record's result in the wanted encoding, encoded once and kept."""
    key = "proto" if protobuf else "json"
    body = record.encoded.get(key)
    if body is None:
        response = record.response
        assert response is not None
        if protobuf:
            body = encode_sample_response(response) + encode_extras(response)
        else:
            body = dumps(response.with_sequence_ids(record.sequence_ids).to_json())
        record.encoded[key] = body
    return body


def _json(value: Any) -> Answer:
    return Answer(dumps(value), JSON)


async def retrieve_future(engine: Engine, owner: str, body: Any, protobuf: bool) -> Answer:
    """One poll of one future; raises ``Problem`` 404 (unknown) or 410 (forgotten)."""
    request = FutureRetrieveRequest.from_json(body)
    record = engine.store.record(owner, request.request_id)
    hold = engine.settings.poll_hold_s
    pause = engine.pause_state()
    if pause is not None:
        state, reason, left = pause
        await asyncio.sleep(min(hold, left))
        if left >= hold:
            return _try_again(record, state, reason)
        hold -= left
    await engine.scheduler.wait(record, hold)
    if engine.store.peek_record(record.request_id) is not record:
        raise gone(f"request {record.request_id!r} has expired; submit it again")
    if record.is_pending:
        pause = engine.pause_state()
        if pause is not None:
            return _try_again(record, pause[0], pause[1])
        return _try_again(record, *engine.scheduler.queue_state(record))
    return _finished(engine, record, request.allow_metadata_only, protobuf)


def _try_again(record: RequestRecord, state: str, reason: Optional[str]) -> Answer:
    queue_state = QueueState.parse(state)
    answer = TryAgainResponse(request_id=record.request_id, queue_state=queue_state, queue_state_reason=reason)
    return _json(answer.to_json())


def _finished(engine: Engine, record: RequestRecord, allow_metadata_only: bool, protobuf: bool) -> Answer:
    if record.state != DONE:
        engine.store.delivered(record)
        failed = RequestFailedResponse(
            error=record.error or "request failed", category=RequestErrorCategory.parse(record.category)
        )
        return _json(failed.to_json())
    body = encoded_result(record, protobuf)
    if allow_metadata_only and len(body) > engine.settings.metadata_threshold_bytes:
        return _json(CompleteMetadataResponse(response_payload_size=len(body)).to_json())
    engine.store.delivered(record)
    return Answer(body, PROTOBUF if protobuf else JSON)


def _decode_poll(body: Any) -> RetrieveFuturesRequest:
    """The typed request, with the ranges the type does not check; 400 naming the field."""
    if not isinstance(body, Mapping):
        raise bad_request("retrieve_futures: expected a JSON object")
    target = body.get("target")
    if not isinstance(target, Mapping) or not isinstance(target.get("sampling_session_id"), str):
        raise bad_request("retrieve_futures: 'target' must be an object with a string 'sampling_session_id'")
    poll = RetrieveFuturesRequest.from_json(body)
    for name, value in (("target.cloned_sampler_id", poll.target.cloned_sampler_id), ("prev_cursor", poll.prev_cursor)):
        if value < 0:
            raise bad_request(f"retrieve_futures: {name} must be an int >= 0, got {value!r}")
    if poll.timeout is not None and poll.timeout < 0:
        raise bad_request(f"retrieve_futures: timeout must be a number >= 0, got {poll.timeout!r}")
    return poll


async def retrieve_futures(engine: Engine, owner: str, body: Any) -> Dict[str, Any]:
    """One poll of a poller: completions since ``prev_cursor`` (held while there are none)."""
    poll = _decode_poll(body)
    clone = poll.target.cloned_sampler_id
    sampler = engine.store.sampling_session(owner, poll.target.sampling_session_id)
    for request_id in poll.retrieved_request_ids:
        record = engine.store.peek_record(request_id)
        if record is not None and record.owner == owner and not record.is_pending:
            engine.store.delivered(record)
    log = sampler.poller_logs.get(clone)
    if log is None:
        log = sampler.poller_logs[clone] = _backfilled_log(engine, sampler, clone)
    hold = engine.settings.poll_hold_s if poll.timeout is None else min(poll.timeout, engine.settings.poll_hold_s)
    await log.wait(poll.prev_cursor, hold)
    entries, cursor = log.since(poll.prev_cursor)
    return RetrieveFuturesResponse([_completion(engine, record) for record in entries], cursor).to_json()


def _backfilled_log(engine: Engine, sampler: SamplingSession, clone: int) -> PollerLog:
    """A new poller's log starts with what already finished for its clone, in completion order."""
    log = PollerLog()
    records = engine.store.records
    done = [records[rid] for rid in sampler.session.record_ids if rid in records]
    done = [
        r
        for r in done
        if r.sampling_session_id == sampler.sampling_session_id
        and not r.is_pending
        and r.seq_id is not None
        and r.seq_id // CLONE_STRIDE == clone
    ]
    for record in sorted(done, key=lambda r: r.completed_at or 0.0):
        log.append(record)
    return log


def _completion(engine: Engine, record: RequestRecord) -> FutureCompletion:
    if record.state != DONE:
        return FutureCompletion(state="failed", request_id=record.request_id)
    if engine.store.peek_record(record.request_id) is not record:  # forgotten: no size to promise
        return FutureCompletion(state="finished", request_id=record.request_id)
    size = len(encoded_result(record, protobuf=True))
    return FutureCompletion(state="finished", request_id=record.request_id, response_payload_uncompressed_size=size)
