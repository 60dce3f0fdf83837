"""How ``sample_many`` runs: the windowed driver and its three backends.

The driver pulls prompts lazily and keeps at most ``max_in_flight`` of them outstanding
(submitted and not yet yielded, so the reorder buffer counts too). A backend takes prompts
one at a time and hands back ``(index, outcome)`` pairs, where an outcome is the (post-processed)
result or the exception that replaced it:

* ``ThreadBackend`` calls ``client.sample`` directly; futures report through a queue.
* ``ChunkBackend`` groups prompts into chunks and runs each chunk in another process through a
  :class:`PoolAdapter`: a ``concurrent.futures`` executor or a ``dask.distributed`` client
  (Dask's own futures and ``as_completed``). The worker runs the chunk with ``ThreadBackend``
  on a client unpickled once per process (:func:`run_chunk`).
"""

from __future__ import annotations

import pickle
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import attrs
import cachetools

from ..errors import TinkexError, ValidationError
from ..types import ModelInput, SamplingParams
from ._progress import NoProgress

__all__ = ["BatchItem", "BatchWorkerError", "ChunkJob", "ThreadBackend", "ChunkBackend", "drive", "run_chunk",
           "pool_adapter"]

Outcome = Any  # a result, or the exception that took its place
Postprocess = Optional[Callable[[Any], Any]]


def _check_optional_params(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not None and not isinstance(value, SamplingParams):
        raise ValidationError(f"sampling_params must be SamplingParams, got {type(value).__name__}",
                              field="sampling_params", value=value)


class BatchWorkerError(TinkexError):
    """A chunk of prompts sent to an executor failed as a whole (worker crashed, pool broken, cancelled).

    Every prompt of the chunk gets this error; ``__cause__`` is what the executor reported.

    Example:
        >>> BatchWorkerError("worker lost").message
        'worker lost'
    """


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
    """What every chunk shares: defaults, post-processing and the per-sample deadline (picklable)."""

    sampling_params: SamplingParams
    num_samples: int
    postprocess: Postprocess = None
    timeout: Optional[float] = None


class _Prompts:
    """Turns the accepted prompt forms into ``(ModelInput, params, num_samples)``.

    The tokenizer for text prompts is looked up once, on the first text prompt.
    """

    def __init__(self, client: Any, job: ChunkJob) -> None:
        self._client = client
        self._job = job
        self._tokenizer: Any = None

    def request(self, item: Any) -> Tuple[ModelInput, SamplingParams, int]:
        params, num_samples = self._job.sampling_params, self._job.num_samples
        if isinstance(item, BatchItem):
            params = item.sampling_params or params
            num_samples = item.num_samples if item.num_samples is not None else num_samples
            item = item.prompt
        return self._prompt(item), params, num_samples

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

    def __init__(self, client: Any, job: ChunkJob) -> None:
        self._client = client
        self._job = job
        self._prompts = _Prompts(client, job)
        self._done: queue.Queue = queue.Queue()
        self._futures: Dict[int, Future] = {}

    def add(self, index: int, item: Any) -> None:
        try:
            prompt, params, num_samples = self._prompts.request(item)
            future = self._client.sample(prompt, num_samples, params, timeout=self._job.timeout)
        except Exception as exc:  # bad prompt or closed client: this item's outcome
            self._done.put((index, None, exc))
            return
        self._futures[index] = future
        future.add_done_callback(lambda done, index=index: self._done.put((index, done, None)))

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

    def _outcome(self, index: int, future: Optional[Future], error: Optional[Exception]) -> Outcome:
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


class ChunkBackend:
    """Groups prompts into chunks of ``chunk_size`` and runs them through a pool adapter.

    Thread-safety: one consuming thread, like :class:`ThreadBackend`.
    """

    def __init__(self, pool: Any, client: Any, job: ChunkJob, chunk_size: int) -> None:
        self._pool = pool
        self._blob = pickle.dumps(client)  # once per batch; each worker process unpickles it once
        self._job = job
        self._chunk_size = chunk_size
        self._buffer: List[Tuple[int, Any]] = []
        self._chunks: Dict[Any, Tuple[int, ...]] = {}

    def add(self, index: int, item: Any) -> None:
        self._buffer.append((index, item))
        if len(self._buffer) >= self._chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        indexes = tuple(index for index, _ in self._buffer)
        items = [item for _, item in self._buffer]
        self._buffer = []
        try:
            handle = self._pool.submit(run_chunk, self._blob, items, self._job)
        except Exception as exc:  # e.g. a broken or shut-down pool: the run cannot go on
            raise BatchWorkerError(f"the executor refused a chunk: {type(exc).__name__}: {exc}") from exc
        self._chunks[handle] = indexes

    def wait(self) -> List[Tuple[int, Outcome]]:
        out: List[Tuple[int, Outcome]] = []
        for handle, outcome in self._pool.wait():
            indexes = self._chunks.pop(handle)
            if isinstance(outcome, BaseException) or len(outcome) != len(indexes):
                failure = _chunk_failure(outcome, len(indexes))
                out.extend((index, failure) for index in indexes)
            else:
                out.extend(zip(indexes, outcome))
        return out

    def cancel(self) -> None:
        handles, self._chunks = list(self._chunks), {}
        self._buffer = []
        self._pool.cancel(handles)


def _chunk_failure(outcome: Any, size: int) -> BatchWorkerError:
    if not isinstance(outcome, BaseException):
        return BatchWorkerError(f"a worker returned {len(outcome)} outcomes for a chunk of {size} prompts")
    error = BatchWorkerError(f"a chunk of {size} prompts failed in its worker: {type(outcome).__name__}: {outcome}")
    error.__cause__ = outcome
    return error


class FuturesPool:
    """Adapter for a ``concurrent.futures.Executor`` (normally a ``ProcessPoolExecutor``)."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self._done: queue.Queue = queue.Queue()

    def workers(self) -> int:
        return int(getattr(self._executor, "_max_workers", 0) or 1)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done.put)
        return future

    def wait(self) -> List[Tuple[Any, Outcome]]:
        ready = [self._done.get()]
        while True:
            try:
                ready.append(self._done.get_nowait())
            except queue.Empty:
                break
        return [(future, _future_outcome(future)) for future in ready]

    def cancel(self, handles: Sequence[Any]) -> None:
        for future in handles:
            future.cancel()  # a chunk already running in a worker finishes there; its outcome is dropped


def _future_outcome(future: Future) -> Outcome:
    try:
        return future.result()
    except Exception as exc:
        return exc


class DaskPool:
    """Adapter for a ``dask.distributed.Client``: its futures and ``as_completed``, nothing of ours."""

    def __init__(self, client: Any) -> None:
        from distributed import as_completed

        self._client = client
        self._completed = as_completed(loop=client.loop, with_results=True, raise_errors=False)

    def workers(self) -> int:
        workers = self._client.scheduler_info().get("workers", {})
        return max(1, sum(int(info.get("nthreads", 1)) for info in workers.values()))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        future = self._client.submit(fn, *args, pure=False)
        self._completed.add(future)
        return future

    def wait(self) -> List[Tuple[Any, Outcome]]:
        ready = [next(self._completed)]
        ready.extend(self._completed.next_batch(block=False))
        return [(future, _dask_outcome(future, result)) for future, result in ready]

    def cancel(self, handles: Sequence[Any]) -> None:
        if handles:
            self._client.cancel(list(handles))


def _dask_outcome(future: Any, result: Any) -> Outcome:
    if future.status == "error" and isinstance(result, tuple):
        return result[1]  # Dask hands back (type, exception, traceback)
    return result


def pool_adapter(executor: Any) -> Any:
    """Wrap a ``concurrent.futures.Executor`` or a ``dask.distributed.Client``."""
    if type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "scheduler_info"):
        return DaskPool(executor)
    from concurrent.futures import Executor

    if isinstance(executor, Executor):
        return FuturesPool(executor)
    raise ValidationError(f"executor must be a concurrent.futures.Executor or a dask.distributed.Client, got "
                          f"{type(executor).__name__}", field="executor", value=type(executor).__name__)


# -- the driver -----------------------------------------------------------------------------------


def drive(backend: Any, items: Iterable[Any], *, max_in_flight: int, ordered: bool, on_error: str,
          progress: Any) -> Iterator[Tuple[int, Outcome]]:
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


# -- the worker side ------------------------------------------------------------------------------

_worker_clients: cachetools.LRUCache = cachetools.LRUCache(maxsize=8)
_worker_lock = threading.Lock()  # guards _worker_clients: Dask runs several chunks per process at once


def _worker_client(blob: bytes) -> Any:
    with _worker_lock:
        client = _worker_clients.get(blob)
        if client is None or client.closed:
            client = pickle.loads(blob)
            _worker_clients[blob] = client
        return client


def run_chunk(blob: bytes, items: Sequence[Any], job: ChunkJob) -> List[Outcome]:
    """Sample one chunk in a worker process; failures come back as (picklable) exceptions."""
    client = _worker_client(blob)
    backend = ThreadBackend(client, job)
    pairs = drive(backend, items, max_in_flight=max(1, len(items)), ordered=True, on_error="record",
                  progress=NoProgress())
    return [_picklable(outcome) for _, outcome in pairs]


def _picklable(outcome: Outcome) -> Outcome:
    if not isinstance(outcome, BaseException):
        return outcome
    try:
        pickle.dumps(outcome)
    except Exception:
        return TinkexError(f"{type(outcome).__name__}: {outcome}")
    return outcome
