"""Sampling many prompts through one SamplingClient: ``sample_many`` and ``sample_many_unordered``.

Both consume prompts lazily and keep at most ``max_in_flight`` outstanding; the windowed driver
and its backends live in :mod:`._exec`.
"""

from __future__ import annotations

from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Generator,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Sized,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from ..errors import ValidationError
from ..types import SampleResponse, SamplingParams
from ._exec import Backend, ChunkJob, ThreadBackend, drive
from ._pools import ChunkBackend, pool_adapter
from ._progress import LazyProgress, ProgressSpec

if TYPE_CHECKING:
    from ..sampling_client import SamplingClient

__all__ = ["sample_many", "sample_many_unordered", "check_arguments", "DEFAULT_MAX_IN_FLIGHT",
           "DEFAULT_CHUNK_SIZE"]

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_CHUNK_SIZE = 128
_ON_ERROR = ("raise", "record")
T = TypeVar("T")


# What sample_many yields, by its arguments: results (or what postprocess makes of them), and under
# on_error="record" the exception object in place of a failed prompt's result.
@overload
def sample_many(
    client: SamplingClient, prompts: Iterable[Any], sampling_params: SamplingParams, *, num_samples: int = ...,
    max_in_flight: Optional[int] = ..., on_error: Literal["raise"] = ..., progress: ProgressSpec = ...,
    executor: Any = ..., total: Optional[int] = ..., timeout: Optional[float] = ..., postprocess: None = ...,
    chunk_size: Optional[int] = ..., max_request_bytes: Optional[int] = ...,
) -> Iterator[SampleResponse]: ...
@overload
def sample_many(
    client: SamplingClient, prompts: Iterable[Any], sampling_params: SamplingParams, *, num_samples: int = ...,
    max_in_flight: Optional[int] = ..., on_error: Literal["raise"] = ..., progress: ProgressSpec = ...,
    executor: Any = ..., total: Optional[int] = ..., timeout: Optional[float] = ...,
    postprocess: Callable[[SampleResponse], T], chunk_size: Optional[int] = ...,
    max_request_bytes: Optional[int] = ...,
) -> Iterator[T]: ...
@overload
def sample_many(
    client: SamplingClient, prompts: Iterable[Any], sampling_params: SamplingParams, *, num_samples: int = ...,
    max_in_flight: Optional[int] = ..., on_error: Literal["record"], progress: ProgressSpec = ...,
    executor: Any = ..., total: Optional[int] = ..., timeout: Optional[float] = ..., postprocess: None = ...,
    chunk_size: Optional[int] = ..., max_request_bytes: Optional[int] = ...,
) -> Iterator[Union[SampleResponse, BaseException]]: ...
@overload
def sample_many(
    client: SamplingClient, prompts: Iterable[Any], sampling_params: SamplingParams, *, num_samples: int = ...,
    max_in_flight: Optional[int] = ..., on_error: Literal["record"], progress: ProgressSpec = ...,
    executor: Any = ..., total: Optional[int] = ..., timeout: Optional[float] = ...,
    postprocess: Callable[[SampleResponse], T], chunk_size: Optional[int] = ...,
    max_request_bytes: Optional[int] = ...,
) -> Iterator[Union[T, BaseException]]: ...
@overload
def sample_many(
    client: SamplingClient, prompts: Iterable[Any], sampling_params: SamplingParams, *, num_samples: int = ...,
    max_in_flight: Optional[int] = ..., on_error: str = ..., progress: ProgressSpec = ..., executor: Any = ...,
    total: Optional[int] = ..., timeout: Optional[float] = ...,
    postprocess: Optional[Callable[[SampleResponse], Any]] = ..., chunk_size: Optional[int] = ...,
    max_request_bytes: Optional[int] = ...,
) -> Iterator[Any]: ...


def sample_many(
    client: SamplingClient,
    prompts: Iterable[Any],
    sampling_params: SamplingParams,
    *,
    num_samples: int = 1,
    max_in_flight: Optional[int] = None,
    on_error: str = "raise",
    progress: ProgressSpec = None,
    executor: Any = None,
    total: Optional[int] = None,
    timeout: Optional[float] = None,
    postprocess: Optional[Callable[[Any], Any]] = None,
    chunk_size: Optional[int] = None,
    max_request_bytes: Optional[int] = None,
) -> Iterator[Any]:
    """Sample every prompt; yield one result per prompt, in input order.

    Args:
        client: a ready :class:`~tinkex.SamplingClient`.
        prompts: any iterable of prompts (see the module docstring), consumed lazily.
        sampling_params: parameters for every prompt without its own.
        num_samples: sequences per prompt.
        max_in_flight: prompts outstanding at once (default 256; with an executor, two
            chunks per worker).
        on_error: ``"raise"`` stops at the first failure, cancels outstanding work and raises
            it (after yielding every earlier result); ``"record"`` yields the exception object in
            place of that prompt's result and goes on.
        progress: None shows progress only on a terminal; True anywhere (tqdm bar if
            installed, else a periodic INFO log line); ``"bar"`` / ``"log"`` pick one; False none;
            or your own object with ``update(failed: bool)`` and ``close()``.
        executor: a ``ProcessPoolExecutor`` (or any ``concurrent.futures.Executor``) or a
            ``dask.distributed.Client`` to sample in other processes; None samples here.
        total: the number of prompts, for the ETA (default ``len(prompts)`` when it has one).
        timeout: a deadline in seconds for each prompt's sample call.
        postprocess: applied to each result before it is yielded; with an executor it runs in
            the worker (so it must pickle), which is where heavy scoring belongs. Its exceptions
            count as that prompt's failure.
        chunk_size: prompts per task sent to an executor (default 128).
        max_request_bytes: the largest request body the server accepts; a prompt whose request
            would be larger fails with ``ValidationError`` (field ``prompt``) without being sent,
            instead of being built and answered 413. None (default) sends every prompt.

    Returns:
        An iterator of :class:`~tinkex.types.SampleResponse` (or ``postprocess`` results, or
        exceptions under ``on_error="record"``). Closing it, breaking out of the loop or Ctrl-C
        cancels outstanding work; a chunk already running in a worker process finishes there.

    Raises:
        ValidationError: a bad argument (raised here, before anything is sent).
    """
    pairs = sample_many_unordered(
        client, prompts, sampling_params, num_samples=num_samples, max_in_flight=max_in_flight, on_error=on_error,
        progress=progress, executor=executor, total=total, timeout=timeout, postprocess=postprocess,
        chunk_size=chunk_size, max_request_bytes=max_request_bytes, _ordered=True,
    )
    return _outcomes(pairs)


def _outcomes(pairs: Generator[Tuple[int, Any], None, None]) -> Iterator[Any]:
    try:
        for _, outcome in pairs:
            yield outcome
    finally:
        pairs.close()  # cancels outstanding work now, not at garbage collection


def sample_many_unordered(
    client: SamplingClient,
    prompts: Iterable[Any],
    sampling_params: SamplingParams,
    *,
    num_samples: int = 1,
    max_in_flight: Optional[int] = None,
    on_error: str = "raise",
    progress: ProgressSpec = None,
    executor: Any = None,
    total: Optional[int] = None,
    timeout: Optional[float] = None,
    postprocess: Optional[Callable[[Any], Any]] = None,
    chunk_size: Optional[int] = None,
    max_request_bytes: Optional[int] = None,
    _ordered: bool = False,
) -> Generator[Tuple[int, Any], None, None]:
    """Like :func:`sample_many` but yields ``(index, result)`` as soon as each result arrives.

    ``index`` is the prompt's 0-based position in ``prompts``. Nothing waits for a slow
    prompt, so throughput is higher when results need not come in order; under
    ``on_error="raise"`` the first failure to arrive is raised.
    """
    check_arguments(sampling_params, on_error, max_in_flight=max_in_flight, chunk_size=chunk_size,
                    max_request_bytes=max_request_bytes)
    job = ChunkJob(sampling_params, num_samples, postprocess, timeout, max_request_bytes)
    if executor is None:
        backend: Backend = ThreadBackend(client, job)
        window = max_in_flight or DEFAULT_MAX_IN_FLIGHT
    else:
        pool = pool_adapter(executor)
        size = chunk_size or DEFAULT_CHUNK_SIZE
        backend = ChunkBackend(pool, client, job, size)
        window = max_in_flight or 2 * size * pool.workers()
    if total is None and isinstance(prompts, Sized):
        total = len(prompts)
    return drive(backend, prompts, max_in_flight=window, ordered=_ordered, on_error=on_error,
                 progress=LazyProgress(progress, total))


def check_arguments(sampling_params: Any, on_error: Any, **positive: Any) -> None:
    """Raise ``ValidationError`` naming the first bad argument (before anything is sent)."""
    if not isinstance(sampling_params, SamplingParams):
        raise ValidationError(f"sampling_params must be SamplingParams, got {type(sampling_params).__name__}",
                              field="sampling_params", value=sampling_params)
    if on_error not in _ON_ERROR:
        raise ValidationError(f"on_error must be 'raise' or 'record', got {on_error!r}", field="on_error",
                              value=on_error)
    for name, value in positive.items():  # each None (the default) or a positive int
        if value is not None and (type(value) is not int or value < 1):
            raise ValidationError(f"{name} must be a positive int, got {value!r}", field=name, value=value)
