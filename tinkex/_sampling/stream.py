"""``SamplingClient.sample_stream``: chunks as the server generates them (protocol.md 9).

The request is sent by ``sample_stream`` itself, in the caller's thread, with the discipline
of ``sample`` before the first byte: the published snapshot, the holder's dispatch gate, the
429 backoff and the same-seq_id resubmits of :meth:`Submitter.resend_until_ok`. Once the
server has answered 200 the stream is never resubmitted: a dropped connection, a body that
ends before every sequence's ``done``, a deadline or an idle timeout is raised from the
iterator, saying how many chunks arrived. A server without the route (404) gets asample and
retrieve_future through the normal ``sample`` path, and the client remembers that in its
snapshot.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Union

import attrs

from .._clock import Clock
from .._config import redact_error
from .._http import EventStream
from .._http.sse import ServerEvent, decode_chunk
from .._wire import codec
from ..errors import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    DecodeError,
    NotFoundError,
    RequestFailedError,
    TinkexError,
    ValidationError,
)
from ..types import SampleResponse, SampleStreamChunk, StreamChunkKind
from .call import Sampler
from .snapshot import SampleCall, Snapshot

if TYPE_CHECKING:
    from ..tokenizers import IncrementalDecoder, Tokenizer

__all__ = [
    "StreamIterator",
    "open_stream",
    "text_pieces",
    "check_idle_timeout",
    "chunks_of_response",
    "DEFAULT_IDLE_TIMEOUT",
    "SDK_METHOD",
]

logger = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 30.0  # above the 15 s a server may stay silent between keep-alives (9.2)
STREAM_PATH = "stream_sample"
SDK_METHOD = "SamplingClient.sample_stream"
_STREAM_HEADERS = {
    "Accept": "text/event-stream",
    "Accept-Encoding": "identity",  # compression would make the server or a proxy buffer tokens
    "X-Tinker-Request-Type": "StreamSample",
    "x-sdk-method": SDK_METHOD,
}


# -- the public iterator ------------------------------------------------------------------


class StreamIterator:
    """The chunks of one streamed sample, yielded as their events arrive.

    An iterator (``for``, ``next()``, ``itertools``) and a context manager. Leaving early --
    ``break`` followed by garbage collection, ``close()``, or the end of a ``with`` block --
    closes the HTTP response, so the connection goes back to the pool and the server stops
    generating. Token chunks carry ``token``, the text the token completes, decoded
    incrementally (never half a UTF-8 character) when the model's tokenizer is known, else
    the server's text or None; a ``done`` chunk's ``token`` holds any text the decoder still
    held back (normally None).

    Thread-safety: iterate from one thread; ``close()`` may be called from another thread
    to abort a blocked read.

    Example:
        >>> with client.sample_stream(prompt, types.SamplingParams(max_tokens=20)) as stream:  # doctest: +SKIP
        ...     for chunk in stream:
        ...         if chunk.is_token:
        ...             print(chunk.token, end="", flush=True)
    """

    def __init__(self, source: Union[_LiveSource, _FallbackSource], texts: _Texts, secret: str = "") -> None:
        self._source = source
        self._texts = texts
        self._secret = secret
        self._finished = False

    def __iter__(self) -> StreamIterator:
        return self

    def __next__(self) -> SampleStreamChunk:
        if self._finished:
            raise StopIteration
        try:
            chunk = self._source.next_chunk()
        except BaseException as exc:
            self.close()
            redact_error(exc, self._secret)  # in place: the traceback stays the original one
            raise
        return self._texts.apply(chunk)

    @property
    def chunks_received(self) -> int:
        """How many chunks have reached the caller."""
        return int(self._source.delivered)

    @property
    def request_id(self) -> Optional[str]:
        """The server's id for this request (its ``X-Request-Id``), when it sent one."""
        return self._source.request_id

    def close(self) -> None:
        """Stop the stream and release its connection; idempotent."""
        if not self._finished:
            self._finished = True
            self._source.close()

    def __enter__(self) -> StreamIterator:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_finished", True):
                self.close()
        except Exception:  # a finaliser must never raise (it may run at interpreter exit)
            pass

    def __repr__(self) -> str:
        state = "closed" if self._finished else "open"
        return f"<StreamIterator {state}, {self.chunks_received} chunk(s) received>"


# -- entry points ----------------------------------------------------------------------------


def open_stream(
    sampler: Sampler, state: Snapshot, call: SampleCall, num_samples: int, *, idle_timeout: float,
    tokenizer: Optional[Tokenizer], secret: str, fallback: Callable[[Optional[float]], Future[SampleResponse]],
) -> StreamIterator:
    """Send ``stream_sample`` for ``call`` and return the iterator over its chunks (see ``sample_stream``).

    Args:
        sampler: submits under the session's gates and rules (its submitter) with the next seq_id.
        state: the snapshot the caller read.
        call: the request body (without ``seq_id``), size estimate and deadline.
        num_samples: sequences the stream must finish.
        idle_timeout: the most seconds to wait for the next bytes.
        tokenizer: decodes token text client-side, or None to keep the server's text.
        secret: scrubbed from every error.
        fallback: ``sample()`` with a timeout, for servers without the route (9.3).

    Raises:
        APIStatusError: a final non-200 answer before the stream started.
        APIConnectionError: no answer within the submit rules (APITimeoutError at the deadline).
        DecodeError: a 200 answer that is not ``text/event-stream``.
    """
    texts = _Texts(tokenizer)
    if state.stream_supported:
        try:
            stream = _open(sampler, state, call, idle_timeout)
        except TinkexError as exc:
            redact_error(exc, secret)
            raise
        if stream is not None:
            source = _LiveSource(stream, num_samples, clock=sampler.clock, idle_timeout=idle_timeout,
                                 deadline=call.deadline, stop=sampler.stop)
            return StreamIterator(source, texts, secret)
        logger.info("%s has no stream_sample route (404); streaming from asample results instead",
                    sampler.transport.url(STREAM_PATH))
        sampler.target.mark_stream_unsupported()
    return StreamIterator(_FallbackSource(fallback, call.deadline, sampler.clock), texts, secret)


def text_pieces(stream: StreamIterator, model: Optional[str]) -> Iterator[str]:
    """Yield the text of sequence 0 piece by piece; joining the pieces gives the decoded text.

    The generator closes its stream when it is closed, exhausted or collected.

    Raises:
        ValidationError: neither the client nor the server can turn this model's tokens
            into text (raised at the first token).
    """
    with stream:
        for chunk in stream:
            if chunk.sequence_index != 0:
                continue
            if chunk.kind is StreamChunkKind.TOKEN and chunk.token is None:
                raise ValidationError(
                    f"no text for token {chunk.token_id}: the tokenizer of {model!r} is unknown here and the "
                    "server sent no text; use sample_stream and decode the token ids", field="base_model",
                    value=model,
                )
            if chunk.token:
                yield chunk.token


def check_idle_timeout(idle_timeout: Optional[float]) -> float:
    if idle_timeout is None:
        return DEFAULT_IDLE_TIMEOUT
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)) or idle_timeout <= 0:
        raise ValidationError(f"idle_timeout must be a positive number of seconds, got {idle_timeout!r}",
                              field="idle_timeout", value=idle_timeout)
    return float(idle_timeout)


# -- text ------------------------------------------------------------------------------------


class _Texts:
    """Per-sequence incremental decoders (client-side text wins over the server's). Not thread-safe."""

    def __init__(self, tokenizer: Optional[Tokenizer]) -> None:
        self._tokenizer = tokenizer
        self._decoders: Dict[int, IncrementalDecoder] = {}

    def _decoder(self, tokenizer: Tokenizer, sequence_index: int) -> IncrementalDecoder:
        decoder = self._decoders.get(sequence_index)
        if decoder is None:
            decoder = self._decoders[sequence_index] = tokenizer.incremental_decoder()
        return decoder

    def apply(self, chunk: SampleStreamChunk) -> SampleStreamChunk:
        tokenizer = self._tokenizer
        if tokenizer is None:
            return chunk
        if chunk.kind is StreamChunkKind.TOKEN:  # built directly: attrs.evolve costs more than the rest of a chunk
            token_id = chunk.token_id
            assert token_id is not None, "decode_chunk requires a token event's token_id"
            return SampleStreamChunk(
                kind=StreamChunkKind.TOKEN, sequence_index=chunk.sequence_index, index=chunk.index,
                token_id=token_id, token=self._decoder(tokenizer, chunk.sequence_index).feed(token_id),
                logprob=chunk.logprob,
            )
        rest = self._decoder(tokenizer, chunk.sequence_index).flush()
        return attrs.evolve(chunk, token=rest) if rest else chunk


# -- opening the stream ----------------------------------------------------------------------


def _open(sampler: Sampler, state: Snapshot, call: SampleCall, idle: float) -> Optional[EventStream]:
    """POST stream_sample under the submit discipline; None when the server has no such route."""
    submitter = sampler.submitter
    body = dict(call.body, seq_id=next(sampler.seq_ids), sampling_session_id=state.sampling_session_id)
    payload = codec.dumps(body)
    with submitter.limits.dispatch.admit(call.estimated_bytes, stop=sampler.stop, deadline=call.deadline):
        try:
            answer = submitter.resend_until_ok(state, call, lambda: sampler.transport.open_stream(
                STREAM_PATH, payload, _STREAM_HEADERS, idle, call.deadline))
        except NotFoundError:
            return None
    assert isinstance(answer, EventStream)
    answer.check_event_stream()
    return answer


# -- the two sources of chunks ---------------------------------------------------------------


class _Progress:
    """Checks each sequence's chunks arrive as 9.2 says; knows when every sequence is done."""

    def __init__(self, num_samples: int) -> None:
        self._next_index = [0] * num_samples
        self._open = set(range(num_samples))

    @property
    def unfinished(self) -> List[int]:
        return sorted(self._open)

    def check(self, chunk: SampleStreamChunk) -> None:
        seq = chunk.sequence_index
        if seq >= len(self._next_index):
            raise DecodeError(f"stream_sample: sequence_index {seq} is not below num_samples={len(self._next_index)}")
        if seq not in self._open:
            raise DecodeError(f"stream_sample: a {chunk.kind} event for sequence {seq} after its done event")
        expected = self._next_index[seq]
        if chunk.kind is StreamChunkKind.TOKEN:
            if chunk.index != expected:
                raise DecodeError(f"stream_sample: sequence {seq} token index {chunk.index}, expected {expected}")
            self._next_index[seq] = expected + 1
        elif chunk.total_tokens != expected:
            raise DecodeError(f"stream_sample: sequence {seq} done with total_tokens={chunk.total_tokens} "
                              f"after {expected} token(s)")
        else:
            self._open.discard(seq)


class _LiveSource:
    """Chunks read from the open SSE response. Not thread-safe, except ``close``."""

    def __init__(self, response: EventStream, num_samples: int, *, clock: Clock, idle_timeout: float,
                 deadline: Optional[float], stop: threading.Event) -> None:
        self._response = response
        self._events = response.events(clock=clock, idle_timeout=idle_timeout, deadline=deadline)
        self._progress = _Progress(num_samples)
        self._stop = stop
        self.request_id = response.request_id
        self._ended = False
        self.delivered = 0

    def next_chunk(self) -> SampleStreamChunk:
        while True:
            try:
                event = next(self._events)
            except StopIteration:
                self._ended = True
                self._check_complete()
                raise
            except APIConnectionError as exc:
                raise self._broken(exc) from None
            chunk = decode_chunk(event) if event.complete else self._last_event(event)
            if chunk is None:
                continue
            if chunk.kind is StreamChunkKind.ERROR:
                self._ended = True
                raise RequestFailedError(f"Request failed: {chunk.message}", request_id=self.request_id,
                                         category=str(chunk.category))
            self._progress.check(chunk)
            self.delivered += 1
            return chunk

    def _last_event(self, event: ServerEvent) -> Optional[SampleStreamChunk]:
        """An event the body ended inside: kept if it decodes, else the stream was cut short."""
        try:
            return decode_chunk(event)
        except DecodeError:
            raise self._broken(APIConnectionError("the stream ended in the middle of an event",
                                                  url=self._response.url)) from None

    def _check_complete(self) -> None:
        missing = self._progress.unfinished
        if missing:
            raise self._broken(APIConnectionError(
                f"the stream ended before sequence(s) {missing} finished", url=self._response.url))

    def _broken(self, exc: APIConnectionError) -> TinkexError:
        count = f"after {self.delivered} chunk(s)"
        if self._stop.is_set():
            return ClientClosedError(f"the SamplingClient was closed during the stream ({count})")
        cls = APITimeoutError if isinstance(exc, APITimeoutError) else APIConnectionError
        return cls(f"{exc.message} {count}; the stream is incomplete", url=exc.url, request_id=self.request_id)

    def close(self) -> None:
        if not self._ended:  # abandoned mid-stream: unblock a read in another thread, drop the connection
            self._response.abort()
        self._response.close()


class _FallbackSource:
    """Chunks rebuilt from ``sample()``'s result, for servers without stream_sample (9.3)."""

    def __init__(self, sample: Callable[[Optional[float]], Future[SampleResponse]], deadline: Optional[float],
                 clock: Clock) -> None:
        timeout = None
        if deadline is not None:
            timeout = deadline - clock.monotonic()
            if timeout <= 0:
                raise APITimeoutError("the stream's deadline passed before the fallback sample was sent")
        self._future = sample(timeout)
        self._chunks: Optional[Iterator[SampleStreamChunk]] = None
        self.delivered = 0
        self.request_id: Optional[str] = None

    def next_chunk(self) -> SampleStreamChunk:
        if self._chunks is None:
            self._chunks = iter(chunks_of_response(self._future.result()))
        chunk = next(self._chunks)
        self.delivered += 1
        return chunk

    def close(self) -> None:
        self._future.cancel()


def chunks_of_response(response: SampleResponse) -> List[SampleStreamChunk]:
    """The chunks a stream would have carried for ``response`` (protocol 9.3), without text.

    Example:
        >>> from tinkex.types import SampledSequence, StopReason
        >>> chunks = chunks_of_response(SampleResponse(sequences=[SampledSequence(tokens=[7], logprobs=[-0.5])]))
        >>> [(c.kind.value, c.token_id, c.logprob) for c in chunks]
        [('token', 7, -0.5), ('done', None, None)]
    """
    chunks: List[SampleStreamChunk] = []
    for seq_index, seq in enumerate(response.sequences):
        logprobs = seq.logprobs or []
        chunks.extend(
            SampleStreamChunk(kind=StreamChunkKind.TOKEN, sequence_index=seq_index, index=i, token_id=token,
                              logprob=logprobs[i] if i < len(logprobs) else None)
            for i, token in enumerate(seq.tokens)
        )
        chunks.append(SampleStreamChunk(kind=StreamChunkKind.DONE, sequence_index=seq_index,
                                        finish_reason=seq.stop_reason, total_tokens=len(seq.tokens)))
    return chunks
