"""SamplingClient: ``sample`` and ``compute_logprobs`` returning ``concurrent.futures`` futures."""

from __future__ import annotations

import itertools
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator, List, Optional

import attrs

from . import _lifecycle
from ._clock import SYSTEM_CLOCK, Clock
from ._config import redact_error
from ._limits import estimate_bytes
from ._policy import PollPolicy, RetryConfig
from ._sampling.call import SampleCall, Sampler, Snapshot
from ._sampling.future import Cancelled, SampleFuture
from ._session import Holder
from .errors import ClientClosedError, NotFoundError, TinkexError, ValidationError
from .queue_state import QueueStateLogger, QueueStateReporter
from .telemetry import Telemetry
from .types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    GetSamplerResponse,
    ModelInput,
    SampleRequest,
    SampleResponse,
    SampleStreamChunk,
    SamplingParams,
)

if TYPE_CHECKING:
    from .tokenizers import Tokenizer

__all__ = ["SamplingClient"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 256
CLONE_SEQ_STRIDE = 10**9
_LOGPROB_PARAMS = SamplingParams(max_tokens=1, temperature=1.0, top_k=-1, top_p=1.0)


@attrs.frozen
class _Target:
    base_model: Optional[str]
    model_path: Optional[str]
    sampling_session_id: Optional[str]


def _check_target(base_model: Optional[str], model_path: Optional[str], sampling_session_id: Optional[str]) -> _Target:
    if model_path is not None and not (isinstance(model_path, str) and model_path.startswith("tinker://")):
        raise ValidationError(f"model_path must start with 'tinker://', got {model_path!r}", field="model_path",
                              value=model_path)
    if base_model is None and model_path is None and sampling_session_id is None:
        raise ValidationError("Either model_path or base_model must be provided", field="base_model", value=None)
    return _Target(base_model, model_path, sampling_session_id)


class SamplingClient:
    """Samples from one model (one sampling session) of a Tinker service.

    Create it with :meth:`ServiceClient.create_sampling_client`; it is ready when returned.
    ``sample`` and ``compute_logprobs`` return :class:`concurrent.futures.Future` objects run
    on the client's thread pool; ``future.cancel()`` stops a running sample too.

    Thread-safety: safe to share between threads; each call reads the published snapshot
    once without a lock, and the snapshot is replaced whole, never mutated.

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
        owns_holder: bool = False,
        clone: bool = False,
        pickle_api_key: bool = False,
    ) -> None:
        self._target = _check_target(base_model, model_path, sampling_session_id)
        self._holder = holder
        self._retry_config = retry_config or RetryConfig()
        self._poll_policy = poll_policy or PollPolicy()
        self._max_workers = max_workers
        self._owns_holder = owns_holder
        self._clone = clone
        self._pickle_api_key = pickle_api_key
        self._clock = clock
        self._telemetry = Telemetry()
        self._default_logger = QueueStateLogger()
        self._observer = queue_state_observer if queue_state_observer is not None else self._default_logger
        self._snapshot: Optional[Snapshot] = None
        self._seq = itertools.count()
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()  # guards _pending, the futures close() must cancel
        self._recover_lock = threading.Lock()  # one re-creation of a forgotten sampling session at a time
        self._closed = False
        self._ready: Future[SamplingClient] = Future()
        self._init_thread = threading.Thread(target=self._initialise, name="tinkex-sampling-init", daemon=True)
        self._init_thread.start()
        _lifecycle.register(self)

    # -- initialisation (on the dedicated init thread) ---------------------------------------

    def _initialise(self) -> None:
        try:
            self._publish(self._build_snapshot())
            self._ready.set_result(self)
        except BaseException as exc:  # the caller of wait_ready() gets it
            self._ready.set_exception(exc)

    def _build_snapshot(self) -> Snapshot:
        info = self._holder.info
        target = self._target
        sampling_session_id = target.sampling_session_id or self._create_sampling_session(info.session_id)
        if self._clone:
            self._seq = itertools.count(self._clone_id(sampling_session_id, info.client_config) * CLONE_SEQ_STRIDE)
        base_model, tokenizer_id = target.base_model, None
        if base_model is None or target.sampling_session_id is not None:
            base_model, tokenizer_id = self._describe_sampler(sampling_session_id, base_model)
        retry = self._retry_config
        limit = info.client_config.sample_max_concurrent_requests
        workers = max(1, min(self._max_workers or DEFAULT_MAX_WORKERS, limit, retry.max_connections or limit))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinkex-sample")
        self._transport = self._holder.transport.derive(pool_size=workers + 4)
        self._sampler = Sampler(
            self._holder, self._transport, telemetry=self._telemetry, clock=self._clock,
            next_seq_id=lambda: next(self._seq),
            reporter=QueueStateReporter(self._observer, {"session_id": info.session_id,
                                                         "sampling_session_id": sampling_session_id}),
            snapshot=lambda: self._state, recover=self._recover_sampling_session,
        )
        self._holder.add_dynamic_config_listener(self._on_dynamic_config)
        logger.info("Sampling session %s ready for model %s", sampling_session_id, base_model or target.model_path)
        return Snapshot(
            session_id=info.session_id, sampling_session_id=sampling_session_id, base_model=base_model,
            model_path=target.model_path, client_config=info.client_config, dynamic_config=info.dynamic_config,
            retry_config=retry, poll_policy=self._poll_policy, tokenizer_id=tokenizer_id,
        )

    def _create_sampling_session(self, session_id: str) -> str:
        request = CreateSamplingSessionRequest(
            session_id=session_id, sampling_session_seq_id=self._holder.next_sampling_session_seq_id(),
            base_model=self._target.base_model, model_path=self._target.model_path,
        )
        answer = self._holder.transport.request("POST", "create_sampling_session", body=request)
        return CreateSamplingSessionResponse.from_json(answer.json("create_sampling_session")).sampling_session_id

    def _recover_sampling_session(self, stale: Snapshot) -> bool:
        """Re-create the session and sampling session when the server no longer knows either (it
        restarted); True when a newer snapshot is published, by this call or a concurrent one."""
        with self._recover_lock:
            current = self._snapshot
            if current is None or current.sampling_session_id != stale.sampling_session_id:
                return current is not None
            if self._target.sampling_session_id is not None or self._closed or not self._forgotten(stale):
                return False
            session_id = self._holder.renew_session(stale.session_id)
            if session_id == stale.session_id:
                return False  # the session lives on: the error was about this request, not a restart
            sampling_session_id = self._create_sampling_session(session_id)
            logger.warning("The server no longer knows sampling session %s (did it restart?); continuing on new "
                           "sampling session %s", stale.sampling_session_id, sampling_session_id)
            self._publish(attrs.evolve(current, session_id=session_id, sampling_session_id=sampling_session_id))
            return True

    def _forgotten(self, state: Snapshot) -> bool:
        try:
            self._holder.transport.request("GET", f"samplers/{state.sampling_session_id}", max_retries=2)
        except NotFoundError:
            return True
        except TinkexError:
            return False
        return False

    def _describe_sampler(self, sampling_session_id: str, base_model: Optional[str]) -> Any:
        try:
            answer = self._holder.transport.request("GET", f"samplers/{sampling_session_id}")
            sampler = GetSamplerResponse.from_json(answer.json("samplers"))
        except TinkexError:
            if base_model is None:
                raise
            return base_model, None
        return sampler.base_model, sampler.tokenizer_id

    def _clone_id(self, sampling_session_id: str, client_config: Any) -> int:
        if client_config.sample_join_sampling_session:
            answer = self._holder.transport.request(
                "POST", "join_sampling_session",
                body={"sampling_session_id": sampling_session_id, "type": "join_sampling_session"},
            ).json("join_sampling_session")
            counter = answer.get("client_counter") if isinstance(answer, dict) else None
            if isinstance(counter, int) and counter >= 1:
                return counter
            raise TinkexError(f"join_sampling_session answered without a client_counter: {answer!r}")
        import secrets

        return 1 + secrets.randbelow(10**9 - 1)

    def _publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot  # one reference assignment: readers never lock

    def _on_dynamic_config(self, dynamic: Any) -> None:
        state = self._snapshot
        if state is not None:
            self._publish(attrs.evolve(state, dynamic_config=dynamic))

    @classmethod
    def create_async(cls, service: Any, **kwargs: Any) -> Future[SamplingClient]:
        """Start creating a client on ``service``; returns a future of the ready client."""
        return service.create_sampling_client_async(**kwargs)

    def wait_ready(self, timeout: Optional[float] = None) -> SamplingClient:
        """Block until initialisation finished; re-raises its error."""
        return self._ready.result(timeout)

    @property
    def _state(self) -> Snapshot:
        state = self._snapshot
        if state is None:
            raise ValidationError("SamplingClient not initialized", field="sampling_client", value=None)
        return state

    # -- public calls ------------------------------------------------------------------------

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int = 1,
        sampling_params: Optional[SamplingParams] = None,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        *,
        timeout: Optional[float] = None,
    ) -> Future[SampleResponse]:
        """Sample ``num_samples`` sequences continuing ``prompt``.

        Args:
            prompt: the prompt tokens.
            num_samples: sequences to generate.
            sampling_params: how to sample (required).
            include_prompt_logprobs: also score the prompt.
            topk_prompt_logprobs: top-k alternatives per prompt position.
            timeout: a deadline in seconds for the whole call, polling included.

        Returns:
            A future of the :class:`SampleResponse`.

        Raises:
            ValidationError: bad arguments (raised here, before anything is sent).
            ClientClosedError: the client is closed.
        """
        if sampling_params is None:
            raise ValidationError("sampling_params is required", field="sampling_params", value=None)
        request = self._request(prompt, sampling_params, num_samples, include_prompt_logprobs, topk_prompt_logprobs)
        return self._submit(request, prompt, timeout, "SamplingClient.sample", None)

    def compute_logprobs(
        self, prompt: ModelInput, *, topk_prompt_logprobs: int = 0, timeout: Optional[float] = None
    ) -> Future[List[Optional[float]]]:
        """Score ``prompt``: a future of one logprob per token (the first is None)."""
        request = self._request(prompt, _LOGPROB_PARAMS, 1, True, topk_prompt_logprobs)
        return self._submit(
            request, prompt, timeout, "SamplingClient.compute_logprobs", lambda r: r.prompt_logprobs or []
        )

    def _request(self, prompt: Any, params: Any, num_samples: Any, logprobs: Any, topk: Any) -> SampleRequest:
        if not isinstance(prompt, ModelInput):
            raise ValidationError(f"prompt must be a ModelInput, got {type(prompt).__name__}", field="prompt",
                                  value=type(prompt).__name__)
        if not isinstance(params, SamplingParams):
            raise ValidationError(f"sampling_params must be SamplingParams, got {type(params).__name__}",
                                  field="sampling_params", value=params)
        if not isinstance(logprobs, bool):
            raise ValidationError(f"include_prompt_logprobs must be a bool, got {logprobs!r}",
                                  field="include_prompt_logprobs", value=logprobs)
        return SampleRequest(prompt=prompt, sampling_params=params, num_samples=num_samples,
                             prompt_logprobs=logprobs, topk_prompt_logprobs=topk)

    def _submit(self, request: SampleRequest, prompt: ModelInput, timeout: Optional[float], method: str,
                finish: Any) -> Any:
        if self._closed:
            raise ClientClosedError("this SamplingClient is closed")
        state = self._state
        executor = self._executor
        assert executor is not None
        deadline = _deadline(timeout, self._clock)
        future = SampleFuture()
        body = request.to_json()
        body.pop("seq_id", None)
        call = SampleCall(body=body, estimated_bytes=estimate_bytes(prompt), deadline=deadline,
                          sdk_method=method, cancel=future.cancel_event)
        with self._pending_lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        try:
            executor.submit(self._run, future, call, finish, state)
        except RuntimeError:  # the pool shut down between the closed check and here
            future.cancel()
            raise ClientClosedError("this SamplingClient is closed") from None
        return future

    def _forget(self, future: Future) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def _run(self, future: SampleFuture, call: SampleCall, finish: Any, state: Snapshot) -> None:
        if not future.set_running_or_notify_cancel():
            return
        started = self._clock.monotonic()
        try:
            result = self._sampler.execute(call)
        except Cancelled as cancelled:
            self._telemetry.record("cancelled")
            self._sampler.cancel_remote(cancelled.request_id, state)
        except BaseException as exc:  # every failure reaches the future; nothing is swallowed
            self._record_failure(exc)
            future.set_exception(redact_error(exc, self._holder.config.api_key))
        else:
            self._telemetry.record("completed", latency=self._clock.monotonic() - started)
            future.set_result(finish(result) if finish is not None else result)

    def _record_failure(self, exc: BaseException) -> None:
        category = getattr(exc, "category", None) or type(exc).__name__
        self._telemetry.record("failure", category=category)
        reporter = self._holder.reporter
        if reporter is not None:
            reporter.exception(exc)

    def sample_stream(self, prompt: ModelInput, sampling_params: SamplingParams, num_samples: int = 1, *,
                      timeout: Optional[float] = None, idle_timeout: Optional[float] = None,
                      ) -> Iterator[SampleStreamChunk]:
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
        from ._sampling.stream import stream_sample

        return stream_sample(self, prompt, sampling_params, num_samples, timeout=timeout, idle_timeout=idle_timeout)

    def stream_text(self, prompt: ModelInput, sampling_params: SamplingParams, *, timeout: Optional[float] = None,
                    idle_timeout: Optional[float] = None) -> Iterator[str]:
        """Stream the text of one sample, piece by piece: ``"".join(pieces)`` is the decoded text.

        Example:
            >>> for piece in client.stream_text(prompt, types.SamplingParams(max_tokens=64)):  # doctest: +SKIP
            ...     print(piece, end="", flush=True)
        """
        from ._sampling.stream import stream_text

        return stream_text(self, prompt, sampling_params, timeout=timeout, idle_timeout=idle_timeout)

    # -- accessors -----------------------------------------------------------------------------

    @property
    def sampling_session_id(self) -> str:
        return self._state.sampling_session_id

    @property
    def base_model(self) -> Optional[str]:
        return self._state.base_model

    def get_base_model(self) -> Optional[str]:
        return self._state.base_model

    def get_telemetry(self) -> Telemetry:
        """The client's counters and latency percentiles."""
        return self._telemetry

    def clear_queue_state_debounce(self, session_id: str) -> None:
        """Let the next pause warning for ``session_id`` log at once."""
        self._default_logger.clear(session_id)

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer of this client's model (see :mod:`tinkex.tokenizers`)."""
        from .tokenizers import get_tokenizer

        state = self._state
        return get_tokenizer(state.tokenizer_id or state.base_model or "")

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel pending work, stop the pool and (if it owns it) the session; idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._pending_lock:
            pending = list(self._pending)
        for future in pending:
            future.cancel()
        state = self._snapshot
        if self._executor is not None and state is not None:
            self._sampler.cancel_polling(state)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._transport.close()  # aborts reads still blocked, so the workers unwind now
            self._holder.wake_waiters()
            self._executor.shutdown(wait=True)
        if self._owns_holder:
            self._holder.close(finish=not self._clone)
        _lifecycle.unregister(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SamplingClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = self._snapshot
        ident = state.sampling_session_id if state is not None else "initialising"
        return f"<SamplingClient {ident} at {self._holder.config.base_url}>"

    def __reduce__(self) -> Any:
        from ._sampling.pickling import reduce_sampling_client

        return reduce_sampling_client(self)


def _deadline(timeout: Optional[float], clock: Clock) -> Optional[float]:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValidationError(f"timeout must be a positive number of seconds, got {timeout!r}", field="timeout",
                              value=timeout)
    return clock.monotonic() + float(timeout)
