"""How ``sample_many`` runs here: prompts turned into requests, the thread backend and the windowed driver.

The driver pulls prompts lazily and keeps at most ``max_in_flight`` of them outstanding
(submitted and not yet yielded, so the reorder buffer counts too). A backend takes prompts
one at a time and hands back ``(index, outcome)`` pairs, where an outcome is the (post-processed)
result or the exception that replaced it. ``ThreadBackend`` calls ``client.sample`` directly and
its futures report through a queue; the backends for other processes are in :mod:`._pools`.
"""

from __future__ import annotations

import functools
import json
import queue
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Dict, Generator, Iterable, List, Optional, Protocol, Tuple

import attrs

from ..errors import TinkexError, ValidationError
from ..types import ModelInput, SampleRequest, SampleResponse, SamplingParams
from ._progress import Progress

if TYPE_CHECKING:
    from ..sampling_client import SamplingClient
    from ..tokenizers import Tokenizer

__all__ = ["BatchItem", "BatchWorkerError", "WorkerSetupError", "ChunkJob", "ThreadBackend", "drive", "request_bytes",
           "Outcome", "Backend"]

Outcome = Any  # a result, or the exception that took its place
Postprocess = Optional[Callable[[Any], Any]]
# A finished prompt as the thread backend sees it: (index, the client's future or None, the error that replaced it).
_Done = Tuple[int, Optional[Future[SampleResponse]], Optional[Exception]]
# What an asample body adds to the SampleRequest's own JSON: session id, seq_id, type, headers' worth of slack.
REQUEST_OVERHEAD_BYTES = 512


def _check_optional_params(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, SamplingParams):
        raise ValidationError(f"sampling_params must be SamplingParams, got {type(value).__name__}",
                              field="sampling_params", value=value)


class Backend(Protocol):
    """What :func:`drive` needs of a backend: prompts in one at a time, ``(index, outcome)`` pairs out."""

    def add(self, index: int, item: Any) -> None: ...

    def flush(self) -> None: ...

    def wait(self) -> List[Tuple[int, Outcome]]: ...

    def cancel(self) -> None: ...


class BatchWorkerError(TinkexError):
    """A chunk of prompts sent to an executor failed as a whole (worker crashed, pool broken, cancelled).

    Every prompt of the chunk gets this error; ``__cause__`` is what the executor reported.

    Example:
        >>> BatchWorkerError("worker lost").message
        'worker lost'
    """


class WorkerSetupError(BatchWorkerError):
    """A worker process could not build its sampling client, so every chunk would fail alike; the run stops.

    The usual cause is a worker without the API key. Attributes: ``field``, the configuration
    field that was refused (``"api_key"`` for a missing key), or None.

    Example:
        >>> WorkerSetupError("no key", field="api_key").field
        'api_key'
    """

    def __init__(self, message: str, *, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field


@attrs.frozen
class BatchItem:
    """One prompt of a batch with its own sampling parameters or sample count.

    Args:
        prompt: a ``ModelInput``, a list of token ids or a str (encoded with the client's tokenizer).
        sampling_params: replaces the batch's parameters for this prompt.
        num_samples: replaces the batch's ``num_samples`` for this prompt.

    Example:
        >>> BatchItem("Once upon a time", SamplingParams(max_tokens=4, seed=1)).num_samples is None
        True
    """

    prompt: Any
    sampling_params: Optional[SamplingParams] = attrs.field(default=None, validator=_check_optional_params)
    num_samples: Optional[int] = None


@attrs.frozen
class ChunkJob:
    """What every chunk shares: defaults, post-processing, the per-sample deadline and the request limit (picklable)."""

    sampling_params: SamplingParams
    num_samples: int
    postprocess: Postprocess = None
    timeout: Optional[float] = None
    max_request_bytes: Optional[int] = None


def request_bytes(prompt: ModelInput, params: SamplingParams, num_samples: int) -> int:
    """The size of the asample body for this prompt: its JSON form plus the fields the client adds.

    Example:
        >>> request_bytes(ModelInput.from_ints([1, 2, 3]), SamplingParams(max_tokens=4), 1) < 1024
        True
    """
    body = SampleRequest(prompt=prompt, sampling_params=params, num_samples=num_samples).to_json()
    return len(json.dumps(body, separators=(",", ":"))) + REQUEST_OVERHEAD_BYTES


def _check_size(prompt: ModelInput, params: SamplingParams, num_samples: int, limit: Optional[int]) -> None:
    """Refuse a prompt whose request the server would answer with 413, before it is built and sent."""
    if limit is None or 12 * prompt.length + 4096 <= limit:  # a token id is at most ~11 JSON bytes
        return
    size = request_bytes(prompt, params, num_samples)
    if size > limit:
        raise ValidationError(f"the request for this prompt ({prompt.length} tokens) would be {size} bytes, over the "
                              f"limit of {limit} (max_request_bytes)", field="prompt", value=prompt.length)


class _Prompts:
    """Turns the accepted prompt forms into ``(ModelInput, params, num_samples)``.

    The tokenizer for text prompts is looked up once, on the first text prompt.
    """

    def __init__(self, client: SamplingClient, job: ChunkJob) -> None:
        self._client = client
        self._job = job
        self._tokenizer: Optional[Tokenizer] = None

    def request(self, item: Any) -> Tuple[ModelInput, SamplingParams, int]:
        params, num_samples = self._job.sampling_params, self._job.num_samples
        if isinstance(item, BatchItem):
            params = item.sampling_params or params
            num_samples = item.num_samples if item.num_samples is not None else num_samples
            item = item.prompt
        prompt = self._prompt(item)
        _check_size(prompt, params, num_samples, self._job.max_request_bytes)
        return prompt, params, num_samples

    def _prompt(self, item: Any) -> ModelInput:
        if isinstance(item, ModelInput):
            return item
        if isinstance(item, str):
            if self._tokenizer is None:
                self._tokenizer = self._client.get_tokenizer()
            return ModelInput.from_text(item, tokenizer=self._tokenizer)
        if isinstance(item, (list, tuple)):
            return ModelInput.from_ints(item)
        raise ValidationError(f"a prompt must be a ModelInput, a list of token ids or a str, got "
                              f"{type(item).__name__}", field="prompt", value=type(item).__name__)


def _apply(postprocess: Postprocess, result: Any) -> Outcome:
    if postprocess is None:
        return result
    try:
        return postprocess(result)
    except Exception as exc:  # the item's outcome; raised or recorded by the caller's on_error
        return exc


class ThreadBackend:
    """Samples each prompt with ``client.sample``; completions arrive through a queue.

    Thread-safety: ``add``, ``wait`` and ``cancel`` belong to one consuming thread; only the
    futures' done-callbacks (on client threads) touch the queue, which is thread-safe.
    """

    def __init__(self, client: SamplingClient, job: ChunkJob) -> None:
        self._client = client
        self._job = job
        self._prompts = _Prompts(client, job)
        self._done: queue.Queue[_Done] = queue.Queue()
        self._futures: Dict[int, Future[SampleResponse]] = {}

    def add(self, index: int, item: Any) -> None:
        try:
            prompt, params, num_samples = self._prompts.request(item)
            future = self._client.sample(prompt, num_samples, params, timeout=self._job.timeout)
        except Exception as exc:  # bad prompt or closed client: this item's outcome
            self._done.put((index, None, exc))
            return
        self._futures[index] = future
        future.add_done_callback(functools.partial(self._finished, index))

    def _finished(self, index: int, done: Future[SampleResponse]) -> None:
        self._done.put((index, done, None))

    def flush(self) -> None:
        pass

    def wait(self) -> List[Tuple[int, Outcome]]:
        ready = [self._done.get()]
        while True:
            try:
                ready.append(self._done.get_nowait())
            except queue.Empty:
                break
        return [(index, self._outcome(index, future, error)) for index, future, error in ready]

    def _outcome(self, index: int, future: Optional[Future[SampleResponse]], error: Optional[Exception]) -> Outcome:
        if future is None:
            return error
        self._futures.pop(index, None)
        try:
            result = future.result()
        except Exception as exc:
            return exc
        return _apply(self._job.postprocess, result)

    def cancel(self) -> None:
        futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            future.cancel()


# -- the driver -----------------------------------------------------------------------------------


def drive(backend: Backend, items: Iterable[Any], *, max_in_flight: int, ordered: bool, on_error: str,
          progress: Progress) -> Generator[Tuple[int, Outcome], None, None]:
    """Yield ``(index, outcome)`` with at most ``max_in_flight`` prompts outstanding.

    ``on_error="raise"`` stops submitting at the first failure and raises it when it is due
    (in order when ``ordered``); leaving the generator by any route cancels outstanding work.
    """
    source = enumerate(items)
    buffered: Dict[int, Outcome] = {}
    outstanding, next_index, exhausted, failing = 0, 0, False, False
    try:
        while True:
            while not exhausted and not failing and outstanding < max_in_flight:
                pair = next(source, None)
                if pair is None:
                    exhausted = True
                    break
                backend.add(*pair)
                outstanding += 1
            backend.flush()
            if outstanding == 0:
                return
            for index, outcome in backend.wait():
                failed = isinstance(outcome, BaseException)
                progress.update(failed)
                failing = failing or (failed and on_error == "raise")
                if ordered:
                    buffered[index] = outcome
                    continue
                outstanding -= 1
                yield index, _checked(outcome, on_error)
            while next_index in buffered:
                outstanding -= 1
                yield next_index, _checked(buffered.pop(next_index), on_error)
                next_index += 1
    finally:
        backend.cancel()
        progress.close()


def _checked(outcome: Outcome, on_error: str) -> Outcome:
    if on_error == "raise" and isinstance(outcome, BaseException):
        raise outcome
    return outcome
