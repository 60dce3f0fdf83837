"""Running a batch in other processes: chunks of prompts through a process pool or a Dask cluster.

``ChunkBackend`` groups prompts into chunks and runs each through a pool adapter: a
``concurrent.futures`` executor (:class:`FuturesPool`) or a ``dask.distributed`` client
(:class:`DaskPool`, with Dask's own futures and ``as_completed``). A worker runs its chunk with
the thread backend on a client unpickled once per process (:func:`run_chunk`), and exits when
the process that started it dies (:func:`exit_with_parent`), so a killed batch leaves no
worker heartbeating its session.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import threading
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Protocol, Sequence, Tuple

import cachetools

from ..errors import TinkexError, ValidationError
from ._exec import BatchWorkerError, ChunkJob, Outcome, ThreadBackend, WorkerSetupError, drive
from ._progress import NoProgress

if TYPE_CHECKING:
    from ..sampling_client import SamplingClient

__all__ = ["ChunkBackend", "FuturesPool", "DaskPool", "pool_adapter", "run_chunk", "exit_with_parent"]

logger = logging.getLogger(__name__)

ChunkResult = List[Outcome]  # what run_chunk returns: one outcome per prompt of the chunk


class ChunkPool(Protocol):
    """What :class:`ChunkBackend` needs of a pool adapter. A handle is the pool's own future
    (``concurrent.futures`` or Dask): opaque here, only used as a key and handed back to cancel."""

    def workers(self) -> int: ...

    def submit(self, fn: Callable[..., ChunkResult], *args: Any) -> Any: ...

    def wait(self) -> List[Tuple[Any, Outcome]]: ...

    def cancel(self, handles: Sequence[Any]) -> None: ...


class ChunkBackend:
    """Groups prompts into chunks of ``chunk_size`` and runs them through a pool adapter.

    Thread-safety: one consuming thread, like :class:`ThreadBackend`.
    """

    def __init__(self, pool: ChunkPool, client: SamplingClient, job: ChunkJob, chunk_size: int) -> None:
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
            if isinstance(outcome, WorkerSetupError):
                raise outcome  # the next chunks would fail alike: stop now, with the reason
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

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._done: queue.Queue[Future[ChunkResult]] = queue.Queue()

    def workers(self) -> int:
        return int(getattr(self._executor, "_max_workers", 0) or 1)

    def submit(self, fn: Callable[..., ChunkResult], *args: Any) -> Future[ChunkResult]:
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done.put)
        return future

    def wait(self) -> List[Tuple[Future[ChunkResult], Outcome]]:
        ready = [self._done.get()]
        while True:
            try:
                ready.append(self._done.get_nowait())
            except queue.Empty:
                break
        return [(future, _future_outcome(future)) for future in ready]

    def cancel(self, handles: Sequence[Future[ChunkResult]]) -> None:
        for future in handles:
            future.cancel()  # a chunk already running in a worker finishes there; its outcome is dropped


def _future_outcome(future: Future[ChunkResult]) -> Outcome:
    try:
        return future.result()
    except Exception as exc:
        return exc


class _AsCompleted(Protocol):
    """The part of ``distributed.as_completed(with_results=True)`` used here: (future, result) pairs."""

    def add(self, future: Any) -> None: ...

    def __next__(self) -> Tuple[Any, Any]: ...

    def next_batch(self, block: bool = True) -> List[Tuple[Any, Any]]: ...


class DaskPool:
    """Adapter for a ``dask.distributed.Client``: its futures and ``as_completed``, nothing of ours."""

    def __init__(self, client: Any) -> None:
        from distributed import as_completed

        self._client = client
        self._completed: _AsCompleted = as_completed(  # type: ignore[no-untyped-call, unused-ignore]  # distributed leaves it unannotated (an error only under --strict)
            loop=client.loop, with_results=True, raise_errors=False
        )

    def workers(self) -> int:
        workers = self._client.scheduler_info().get("workers", {})
        return max(1, sum(int(info.get("nthreads", 1)) for info in workers.values()))

    def submit(self, fn: Callable[..., ChunkResult], *args: Any) -> Any:
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


def pool_adapter(executor: Any) -> ChunkPool:
    """Wrap a ``concurrent.futures.Executor`` or a ``dask.distributed.Client``."""
    if type(executor).__module__.split(".")[0] == "distributed" and hasattr(executor, "scheduler_info"):
        return DaskPool(executor)
    if isinstance(executor, Executor):
        return FuturesPool(executor)
    raise ValidationError(f"executor must be a concurrent.futures.Executor or a dask.distributed.Client, got "
                          f"{type(executor).__name__}", field="executor", value=type(executor).__name__)



# -- the worker side ------------------------------------------------------------------------------

_worker_clients: cachetools.LRUCache[bytes, SamplingClient] = cachetools.LRUCache(maxsize=8)
_worker_lock = threading.Lock()  # guards _worker_clients: Dask runs several chunks per process at once


def _worker_client(blob: bytes) -> SamplingClient:
    with _worker_lock:
        client = _worker_clients.get(blob)
        if client is None or client.closed:
            client = pickle.loads(blob)  # the SamplingClient ChunkBackend pickled
            client.wait_ready()  # a stand-in for a client this process cannot build raises its ValidationError
            _worker_clients[blob] = client
        return client


def run_chunk(blob: bytes, items: Sequence[Any], job: ChunkJob) -> ChunkResult:
    """Sample one chunk in a worker process; failures come back as (picklable) exceptions."""
    exit_with_parent()
    try:
        client = _worker_client(blob)
    except ValidationError as exc:
        raise WorkerSetupError(
            f"a worker process could not build the sampling client: {exc}. Workers need the API key: create "
            "the ServiceClient with pickle_api_key=True, or set TINKER_API_KEY in the workers' environment",
            field=exc.field) from None
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


_watch_once = threading.Lock()  # acquired by the first caller and never released: one watcher per process


def exit_with_parent() -> None:
    """In a worker process, start (once) a daemon thread that ends the process when its parent dies.

    A pool worker whose parent was killed would otherwise wait for work forever while its
    client's heartbeat keeps the session alive. The thread blocks on the parent's sentinel
    (closed by the kernel when the parent exits) and owns nothing else; outside a
    ``multiprocessing`` child it does nothing.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None or not _watch_once.acquire(blocking=False):
        return
    threading.Thread(target=_exit_when_ready, args=(parent.sentinel,), name="tinkex-batch-parent-watch",
                     daemon=True).start()


# Runs in tests/reliability, but it ends in os._exit, so coverage never saves what it measured there.
def _exit_when_ready(sentinel: int) -> None:  # pragma: no cover - ends the process with os._exit
    multiprocessing.connection.wait([sentinel])
    logger.warning("batch worker %d: the parent process is gone; exiting", os.getpid())
    os._exit(1)  # no atexit: nothing left to deliver results to, and closing could wait on the network
