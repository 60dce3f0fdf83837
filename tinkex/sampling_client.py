"""SamplingClient: ``sample`` and ``compute_logprobs`` returning ``concurrent.futures`` futures.

A thin shell over :mod:`tinkex._sampling`: it validates arguments on the caller's thread,
reads the published snapshot once, and hands the call to its pool. Its lifecycle is one
state (initialising → ready/failed → closed) changed under one lock.
"""

from __future__ import annotations

import enum
import functools
import logging
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator, List, Mapping, Optional, Set, Tuple

from ._clock import SYSTEM_CLOCK, Clock
from ._policy import PollPolicy, RetryConfig
from ._sampling.engine import RETIRE_ABOVE, Engine, build_engine
from ._sampling.future import APIFuture, SampleFuture
from ._sampling.pickling import Ownership, decode_handle, encode_handle, reduce_payload, restore_sampling_client
from ._sampling.request import Extras, build_request, check_answer
from ._sampling.runner import CallRunner, Finish
from ._sampling.snapshot import SampleCall, Snapshot
from ._sampling.stream import SDK_METHOD, StreamIterator, check_idle_timeout, open_stream, text_pieces
from ._sampling.target import SamplingTarget, TargetSpec
from ._session import Holder, register_for_exit, unregister_for_exit
from .errors import ClientClosedError, TinkexError
from .queue_state import QueueStateLogger
from .telemetry import Telemetry
from .types import ModelInput, QueueState, SampleRequest, SampleResponse, SamplingParams, TensorData

if TYPE_CHECKING:
    from .tokenizers import Tokenizer

__all__ = ["SamplingClient"]

logger = logging.getLogger(__name__)

_LOGPROB_PARAMS = SamplingParams(max_tokens=1, temperature=1.0, top_k=-1, top_p=1.0)


class _Lifecycle(enum.Enum):
    INITIALISING = "initialising"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class SamplingClient:
    """Samples from one model (one sampling session) of a Tinker service.

    Create it with :meth:`ServiceClient.create_sampling_client`; it is ready when returned.
    ``sample`` and ``compute_logprobs`` return :class:`concurrent.futures.Future` objects run
    on the client's thread pool; ``future.cancel()`` stops a running sample too.

    Thread-safety: safe to share between threads; each call reads the published snapshot
    once without a lock, and the snapshot is replaced whole, never mutated; the lifecycle
    state changes under one lock.

    Example:
        >>> client = service.create_sampling_client(base_model="tinkex/ngram-small")  # doctest: +SKIP
        >>> fut = client.sample(types.ModelInput.from_ints([72, 105]), 1,
        ...                     types.SamplingParams(max_tokens=8))  # doctest: +SKIP
        >>> fut.result().sequences[0].tokens  # doctest: +SKIP
    """

    def __init__(
        self,
        holder: Holder,
        *,
        base_model: Optional[str] = None,
        model_path: Optional[str] = None,
        sampling_session_id: Optional[str] = None,
        retry_config: Optional[RetryConfig] = None,
        queue_state_observer: Any = None,
        max_workers: Optional[int] = None,
        poll_policy: Optional[PollPolicy] = None,
        clock: Clock = SYSTEM_CLOCK,
        record_stability_info: bool = False,
        _ownership: Optional[Ownership] = None,
    ) -> None:
        spec = TargetSpec(base_model=base_model, model_path=model_path, sampling_session_id=sampling_session_id)
        self._holder = holder
        self._target = SamplingTarget(holder, spec, retry_config or RetryConfig(), poll_policy or PollPolicy())
        self._max_workers = max_workers
        self._ownership = _ownership or Ownership()
        self._clock = clock
        self._telemetry = Telemetry()
        self._runner = CallRunner(self._telemetry, clock, holder)
        self._default_logger = QueueStateLogger()
        self._observer = queue_state_observer if queue_state_observer is not None else self._default_logger
        self._engine: Optional[Engine] = None
        self._lifecycle = _Lifecycle.INITIALISING
        self._lock = threading.Lock()  # guards _lifecycle and the publication of _engine
        self._pending: Set[Future[Any]] = set()
        self._pending_lock = threading.Lock()  # guards _pending (the futures close() must cancel) and its peak
        self._pending_peak = 0  # most futures pending at once since the pool was built
        self._record_stability_info = record_stability_info
        self._ready: APIFuture[SamplingClient] = APIFuture()
        self._init_thread = threading.Thread(target=self._initialise, name="tinkex-sampling-init", daemon=True)
        self._init_thread.start()
        register_for_exit(self)

    # -- initialisation (on the dedicated init thread) ---------------------------------------

    def _initialise(self) -> None:
        try:
            state, first_seq = self._target.resolve(clone=self._ownership.clone)
            logger.info("Sampling session %s ready for model %s", state.sampling_session_id,
                        state.base_model or state.model_path)
            engine = self._build_engine(state, first_seq)
            with self._lock:
                closed = self._lifecycle is _Lifecycle.CLOSED
                if not closed:
                    self._engine, self._lifecycle = engine, _Lifecycle.READY
            if closed:
                engine.close()
                raise ClientClosedError("the SamplingClient was closed during initialisation")
            self._ready.set_result(self)
        except BaseException as exc:  # the caller of wait_ready() gets it
            with self._lock:
                if self._lifecycle is _Lifecycle.INITIALISING:
                    self._lifecycle = _Lifecycle.FAILED
            self._ready.set_exception(exc)

    def _build_engine(self, state: Snapshot, first_seq: int) -> Engine:
        return build_engine(self._holder, self._target, state, first_seq, max_workers=self._max_workers,
                            telemetry=self._telemetry, observer=self._observer, clock=self._clock)

    @classmethod
    def create_async(cls, service: Any, **kwargs: Any) -> APIFuture[SamplingClient]:
        """Start creating a client on ``service``; returns an (awaitable) future of the ready client."""
        future: APIFuture[SamplingClient] = service.create_sampling_client_async(**kwargs)
        return future

    @staticmethod
    def create(service: Any, *, model_path: Optional[str] = None, base_model: Optional[str] = None,
               sampling_session_id: Optional[str] = None, retry_config: Optional[RetryConfig] = None,
               record_stability_info: bool = False) -> APIFuture[SamplingClient]:
        """The official ``SamplingClient.create``, given a :class:`ServiceClient` (tinkex has no
        public holder): an awaitable future of the ready client."""
        future: APIFuture[SamplingClient] = service.create_sampling_client_async(
            model_path, base_model, retry_config, sampling_session_id=sampling_session_id,
            record_stability_info=record_stability_info)
        return future

    def wait_ready(self, timeout: Optional[float] = None) -> SamplingClient:
        """Block until initialisation finished; re-raises its error."""
        return self._ready.result(timeout)

    # The official create_sampling_client returns a future of the client; tinkex returns the
    # client, which is its own future, so ``create_sampling_client(...).result()`` and ``await
    # service.create_sampling_client(...)`` work as they do there.

    def result(self, timeout: Optional[float] = None) -> SamplingClient:
        """This client once ready (as ``wait_ready``): official scripts call ``.result()`` on what
        ``create_sampling_client`` returns."""
        return self.wait_ready(timeout)

    async def result_async(self, timeout: Optional[float] = None) -> SamplingClient:
        """This client once ready, awaited in the running event loop."""
        return await self._ready.result_async(timeout)

    def __await__(self) -> Generator[Any, None, SamplingClient]:
        return self._ready.__await__()

    def _running(self) -> Tuple[Engine, Snapshot]:
        """The engine and the current snapshot, waiting for initialisation if it is still running.

        Raises:
            ClientClosedError: the client is closed.
            TinkexError: initialisation failed (its error).
        """
        if self._lifecycle is _Lifecycle.CLOSED:
            raise ClientClosedError("this SamplingClient is closed")
        engine = self._engine
        if engine is None:
            self._ready.result()
            engine = self._engine
        state = self._target.current
        if engine is None or state is None or self.closed:  # closed meanwhile, by another thread
            raise ClientClosedError("this SamplingClient is closed")
        return engine, state

    def _snapshot(self) -> Snapshot:
        """The current snapshot (still readable after close), waiting for initialisation if needed."""
        state = self._target.current
        if state is None:
            self._ready.result()
            state = self._target.current
        if state is None:  # pragma: no cover - defensive: a successful start-up has published the snapshot
            raise ClientClosedError("this SamplingClient was closed before it was ready")
        return state

    # -- public calls ------------------------------------------------------------------------

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Optional[TensorData] = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: Optional[int] = None,
        *,
        timeout: Optional[float] = None,
    ) -> SampleFuture[SampleResponse]:
        """Sample ``num_samples`` sequences continuing ``prompt`` (the official SDK's signature).

        Args:
            prompt: the prompt tokens.
            num_samples: sequences to generate.
            sampling_params: how to sample.
            include_prompt_logprobs: also score the prompt.
            topk_prompt_logprobs: top-k alternatives per prompt position.
            topk_sample_logprobs: top-k alternatives per generated token
                (``SampledSequence.topk_logprobs``).
            target_prompt_logprobs: an int64 ``TensorData`` ``[len(prompt) - 1, K]`` of token ids
                to score at each prompt position after the first (-1: none); the answer's
                ``target_prompt_logprobs`` has the same shape and layout.
            prompt_alt_tokens_k: draw this many tokens at every prompt position after the first
                (``SampleResponse.prompt_alt_tokens``).
            prompt_logprobs_last_n: score only the last N prompt tokens (needs
                ``include_prompt_logprobs``).
            timeout: a deadline in seconds for the whole call, polling included.

        Returns:
            A future of the :class:`SampleResponse`: ``.result()`` blocks, ``await`` waits in the
            running event loop.

        Raises:
            ValidationError: bad arguments (raised here, before anything is sent).
            ClientClosedError: the client is closed.
        """
        extras = Extras(include_prompt_logprobs, topk_prompt_logprobs, topk_sample_logprobs, target_prompt_logprobs,
                        prompt_alt_tokens_k, prompt_logprobs_last_n, self._record_stability_info)
        request = build_request(prompt, sampling_params, num_samples, extras)
        future: SampleFuture[SampleResponse] = self._submit(
            request, prompt, timeout, "SamplingClient.sample", _checker(request))
        return future

    async def sample_async(
        self,
        prompt: ModelInput,
        num_samples: int,
        sampling_params: SamplingParams,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Optional[TensorData] = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: Optional[int] = None,
        *,
        timeout: Optional[float] = None,
    ) -> SampleResponse:
        """:meth:`sample`, awaited: a coroutine (``asyncio.gather``/``create_task`` take it) that
        submits to the pool and waits in the caller's event loop."""
        return await self.sample(prompt, num_samples, sampling_params, include_prompt_logprobs, topk_prompt_logprobs,
                                 topk_sample_logprobs, target_prompt_logprobs, prompt_alt_tokens_k,
                                 prompt_logprobs_last_n, timeout=timeout)

    def compute_logprobs(
        self, prompt: ModelInput, prompt_logprobs_last_n: Optional[int] = None, *, topk_prompt_logprobs: int = 0,
        timeout: Optional[float] = None,
    ) -> SampleFuture[List[Optional[float]]]:
        """Score ``prompt``: a future of one logprob per token (the first is None).

        Args:
            prompt: the tokens to score.
            prompt_logprobs_last_n: score only the last N tokens (earlier entries are None).
            topk_prompt_logprobs: also compute top-k alternatives (not returned; kept for callers).
            timeout: a deadline in seconds for the whole call.
        """
        extras = Extras(include_prompt_logprobs=True, topk_prompt_logprobs=topk_prompt_logprobs,
                        prompt_logprobs_last_n=prompt_logprobs_last_n)
        request = build_request(prompt, _LOGPROB_PARAMS, 1, extras)
        check = _checker(request)
        future: SampleFuture[List[Optional[float]]] = self._submit(
            request, prompt, timeout, "SamplingClient.compute_logprobs", lambda r: check(r).prompt_logprobs or [])
        return future

    async def compute_logprobs_async(
        self, prompt: ModelInput, prompt_logprobs_last_n: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> List[Optional[float]]:
        """:meth:`compute_logprobs`, awaited (a coroutine)."""
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n, timeout=timeout)

    def _submit(self, request: SampleRequest, prompt: ModelInput, timeout: Optional[float], method: str,
                finish: Finish) -> Any:
        engine, state = self._running()
        call = SampleCall.of(request, prompt, timeout, self._clock, method)
        # cancel() sets call.cancel itself; the abort cuts a read the worker is blocked in
        future: SampleFuture[Any] = SampleFuture(call.cancel, on_cancel=call.abort.abort)
        engine = self._retire_idle_workers(engine)
        with self._pending_lock:
            self._pending.add(future)
            self._pending_peak = max(self._pending_peak, len(self._pending))
        future.add_done_callback(self._forget)
        while True:
            work = functools.partial(self._runner.run, engine, future, call, finish, state)
            future.run_with(work)
            try:
                engine.executor.submit(work)
                return future
            except RuntimeError:  # that pool shut down: the client closed, or it was just replaced
                newer = self._engine
                if self.closed or newer is None or newer is engine:
                    future.cancel()
                    raise ClientClosedError("this SamplingClient is closed") from None
                engine = newer

    def _retire_idle_workers(self, engine: Engine) -> Engine:
        """A pool that grew past ``RETIRE_ABOVE`` workers is replaced by a fresh one when nothing is in
        flight (see :data:`tinkex._sampling.engine.RETIRE_ABOVE`); the old one's idle workers exit."""
        if not engine.retires_workers or self._pending_peak <= RETIRE_ABOVE or self._pending:
            return engine  # the common case, decided without a lock
        with self._lock, self._pending_lock:  # close() takes _lock first too: one order, no deadlock
            current = self._engine
            if (self._lifecycle is not _Lifecycle.READY or current is None or self._pending
                    or self._pending_peak <= RETIRE_ABOVE):
                return current or engine
            self._engine = fresh = current.with_fresh_pool()
            self._pending_peak = 0
        current.executor.shutdown(wait=False)  # nothing in flight: its workers are idle and exit now
        logger.debug("Replaced an idle pool of up to %d workers with a fresh one", current.workers)
        return fresh

    def _forget(self, future: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def sample_stream(self, prompt: ModelInput, sampling_params: SamplingParams, num_samples: int = 1, *,
                      timeout: Optional[float] = None, idle_timeout: Optional[float] = None,
                      ) -> StreamIterator:
        """Stream chunks as tokens are generated (protocol.md 9; see :class:`tinkex._sampling.stream.StreamIterator`).

        The request is sent before this returns, under the rules of :meth:`sample`; the
        returned iterator (also a context manager) yields token and done chunks as they arrive.

        Args:
            prompt: the prompt tokens.
            sampling_params: how to sample.
            num_samples: sequences to generate; their chunks may interleave.
            timeout: a wall-clock deadline in seconds for the whole stream.
            idle_timeout: the most seconds to wait for the next bytes (default 30).

        Raises:
            ValidationError: bad arguments (raised here).
            APIStatusError: a final non-200 answer before the stream started (raised here).
            APIConnectionError: raised while iterating when the stream breaks or ends early;
                APITimeoutError at the deadline or after ``idle_timeout`` of silence.
            RequestFailedError: raised while iterating for an ``error`` event.
        """
        request = build_request(prompt, sampling_params, num_samples, Extras())
        engine, state = self._running()
        call = SampleCall.of(request, prompt, timeout, self._clock, SDK_METHOD)
        idle = check_idle_timeout(idle_timeout)
        return open_stream(
            engine.sampler, state, call, request.num_samples, idle_timeout=idle, tokenizer=self._stream_tokenizer(),
            secret=self._holder.config.api_key,
            fallback=lambda left: self.sample(prompt, request.num_samples, sampling_params, timeout=left),
        )

    def stream_text(self, prompt: ModelInput, sampling_params: SamplingParams, *, timeout: Optional[float] = None,
                    idle_timeout: Optional[float] = None) -> Iterator[str]:
        """Stream the text of one sample, piece by piece: ``"".join(pieces)`` is the decoded text.

        Example:
            >>> for piece in client.stream_text(prompt, types.SamplingParams(max_tokens=64)):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        stream = self.sample_stream(prompt, sampling_params, 1, timeout=timeout, idle_timeout=idle_timeout)
        return text_pieces(stream, self.base_model)

    def _stream_tokenizer(self) -> Any:
        try:
            return self.get_tokenizer()
        except (ImportError, TinkexError) as exc:  # an unknown tokenizer: fall back to the server's text
            logger.debug("Streaming without a client-side tokenizer: %s", exc)
            return None

    # -- accessors -----------------------------------------------------------------------------

    @property
    def sampling_session_id(self) -> str:
        return self._snapshot().sampling_session_id

    @property
    def base_model(self) -> Optional[str]:
        return self._snapshot().base_model

    def get_base_model(self) -> Optional[str]:
        return self._snapshot().base_model

    async def get_base_model_async(self) -> Optional[str]:
        """:meth:`get_base_model` as a coroutine (the answer is known locally; nothing is sent)."""
        return self._snapshot().base_model

    def on_queue_state_change(self, queue_state: QueueState, queue_state_reason: Optional[str] = None) -> None:
        """The official observer hook: log a pause (at most once a minute per sampling session).

        tinkex reports queue states to ``queue_state_observer`` (by default a
        :class:`QueueStateLogger`); this method feeds the same logger.
        """
        metadata: Mapping[str, Any] = {"sampling_session_id": self.sampling_session_id,
                                       "queue_state_reason": queue_state_reason}
        self._default_logger.on_queue_state_change(queue_state, metadata)

    def get_telemetry(self) -> Telemetry:
        """The client's counters and latency percentiles."""
        return self._telemetry

    def clear_queue_state_debounce(self, session_id: str) -> None:
        """Let the next pause warning for ``session_id`` log at once."""
        self._default_logger.clear(session_id)

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer of this client's model (see :mod:`tinkex.tokenizers`)."""
        from .tokenizers import get_tokenizer

        state = self._snapshot()
        return get_tokenizer(state.tokenizer_id or state.base_model or "")

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel pending work, stop the pool and (if it owns it) the session; idempotent."""
        with self._lock:
            if self._lifecycle is _Lifecycle.CLOSED:
                return
            self._lifecycle = _Lifecycle.CLOSED
            engine = self._engine
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()
        state = self._target.current
        if engine is not None:
            if state is not None:  # pragma: no branch - the engine is built after the snapshot is published
                engine.sampler.cancel_polling(state)
            engine.close()
            self._holder.wake_waiters()
            engine.executor.shutdown(wait=True)
        if self._ownership.owns_holder:
            self._holder.close(finish=not self._ownership.clone)
        unregister_for_exit(self)

    @property
    def closed(self) -> bool:
        return self._lifecycle is _Lifecycle.CLOSED

    def __enter__(self) -> SamplingClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._target.current
        ident = state.sampling_session_id if state is not None else "-"
        model = (state.base_model if state is not None else None) or self._target.spec.base_model
        return (f"<SamplingClient {self._lifecycle.value} {ident} model={model!r} "
                f"at {self._holder.config.base_url}>")

    def __reduce__(self) -> Any:
        client = self.wait_ready()
        payload = reduce_payload(client._holder, client._snapshot(), max_workers=client._max_workers,
                                 pickle_api_key=client._ownership.pickle_api_key)
        return (restore_sampling_client, (type(self), payload))

    def get_sampler_handle(self) -> str:
        """A string naming this client's sampler, without credentials: the pickle-free way to hand
        it to another process (:meth:`from_sampler_handle` builds a client there)."""
        client = self.wait_ready()
        payload = reduce_payload(client._holder, client._snapshot(), max_workers=client._max_workers,
                                 pickle_api_key=False)
        return encode_handle(payload)

    @classmethod
    def from_sampler_handle(cls, handle: str, *, api_key: Optional[str] = None) -> SamplingClient:
        """A ready client for the sampler behind ``handle`` (from :meth:`get_sampler_handle`),
        authenticated with ``api_key`` or ``TINKER_API_KEY``; one client per sampler per process.

        Raises:
            ValidationError: ``handle`` is not a sampler handle.
        """
        client: SamplingClient = restore_sampling_client(cls, {**decode_handle(handle), "api_key": api_key})
        return client.wait_ready()  # a stand-in (no key in this process) raises its ValidationError here


def _checker(request: SampleRequest) -> Callable[[SampleResponse], SampleResponse]:
    """The finishing step of a call with extras: fail when the server ignored one of them."""
    return lambda response: check_answer(response, request)
