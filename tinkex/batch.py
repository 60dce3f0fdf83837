"""Batch sampling: many prompts through one SamplingClient, in bounded memory.

:func:`sample_many` yields results in input order, :func:`sample_many_unordered` yields
``(index, result)`` as results arrive, and :func:`run_batch` runs a resumable JSONL file
through them (it is what ``tinkex batch`` calls). Prompts are consumed lazily: a generator of
ten million prompts is never materialised, and at most ``max_in_flight`` prompts are
outstanding (submitted and not yet yielded) at any time.

Prompts may be a :class:`~tinkex.types.ModelInput`, a list (or tuple) of token ids, a str
(encoded with ``client.get_tokenizer()``, no chat template) or a :class:`BatchItem` carrying
one of those with its own sampling parameters or sample count.

Scale-out: pass ``executor=`` a ``concurrent.futures.ProcessPoolExecutor`` or a
``dask.distributed.Client``. The client is pickled once per batch; each worker process
unpickles it once and samples from the same sampling session (seq_ids from ``clone_id ×
10^9``). Workers need the API key: create the ServiceClient with ``pickle_api_key=True``, or
set ``TINKER_API_KEY`` in the workers' environment. Prompts travel to workers in chunks of
``chunk_size``; a chunk runs its prompts concurrently on the worker's client. Give a process
pool a ``spawn`` or ``forkserver`` context (``mp_context=multiprocessing.get_context("spawn")``):
forking a process that runs client threads can deadlock the child.

Example:
    >>> params = types.SamplingParams(max_tokens=16)  # doctest: +SKIP
    >>> for response in sample_many(client, ["Hello", "Goodbye"], params):  # doctest: +SKIP
    ...     print(response.sequences[0].tokens)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import attrs

from ._batch_exec import BatchItem, BatchWorkerError, ChunkBackend, ChunkJob, ThreadBackend, drive, pool_adapter
from ._batch_io import BadLine, OutputFile, Renderer, count_lines, error_record, plan_lines
from ._batch_progress import LazyProgress, ProgressSpec, wants_progress
from .errors import BadRequestError, RequestFailedError, TinkexError, UnprocessableEntityError, ValidationError
from .types import SamplingParams

__all__ = ["BatchItem", "BatchSummary", "BatchAbortedError", "BatchWorkerError", "sample_many",
           "sample_many_unordered", "run_batch", "is_permanent", "DEFAULT_MAX_IN_FLIGHT", "DEFAULT_CHUNK_SIZE",
           "DEFAULT_ABORT_AFTER"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 256
DEFAULT_CHUNK_SIZE = 128
DEFAULT_ABORT_AFTER = 100
_ON_ERROR = ("raise", "record")


def sample_many(
    client: Any,
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
        chunk_size=chunk_size, _ordered=True,
    )
    return _outcomes(pairs)


def _outcomes(pairs: Iterator[Tuple[int, Any]]) -> Iterator[Any]:
    try:
        for _, outcome in pairs:
            yield outcome
    finally:
        pairs.close()  # type: ignore[attr-defined]  # cancels outstanding work now, not at garbage collection


def sample_many_unordered(
    client: Any,
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
    _ordered: bool = False,
) -> Iterator[Tuple[int, Any]]:
    """Like :func:`sample_many` but yields ``(index, result)`` as soon as each result arrives.

    ``index`` is the prompt's 0-based position in ``prompts``. Nothing waits for a slow
    prompt, so throughput is higher when results need not come in order; under
    ``on_error="raise"`` the first failure to arrive is raised.
    """
    _check(sampling_params, on_error, max_in_flight, chunk_size)
    job = ChunkJob(sampling_params, num_samples, postprocess, timeout)
    if executor is None:
        backend: Any = ThreadBackend(client, job)
        window = max_in_flight or DEFAULT_MAX_IN_FLIGHT
    else:
        pool = pool_adapter(executor)
        size = chunk_size or DEFAULT_CHUNK_SIZE
        backend = ChunkBackend(pool, client, job, size)
        window = max_in_flight or 2 * size * pool.workers()
    if total is None and hasattr(prompts, "__len__"):
        total = len(prompts)  # type: ignore[arg-type]
    return drive(backend, prompts, max_in_flight=window, ordered=_ordered, on_error=on_error,
                 progress=LazyProgress(progress, total))


def _check(sampling_params: Any, on_error: Any, max_in_flight: Any, chunk_size: Any) -> None:
    if not isinstance(sampling_params, SamplingParams):
        raise ValidationError(f"sampling_params must be SamplingParams, got {type(sampling_params).__name__}",
                              field="sampling_params", value=sampling_params)
    if on_error not in _ON_ERROR:
        raise ValidationError(f"on_error must be 'raise' or 'record', got {on_error!r}", field="on_error",
                              value=on_error)
    for name, value in (("max_in_flight", max_in_flight), ("chunk_size", chunk_size)):
        if value is not None and (type(value) is not int or value < 1):
            raise ValidationError(f"{name} must be a positive int, got {value!r}", field=name, value=value)


# -- files --------------------------------------------------------------------------------------


@attrs.frozen
class BatchSummary:
    """What a :func:`run_batch` call did.

    Attributes:
        already_done: lines found in the output file at start (skipped).
        sampled: output lines written with sequences.
        failed: output lines written with an error that retrying cannot fix (a bad prompt, a
            user-category failure, a 400/422 answer).
        invalid: input lines reported as errors (bad JSON, missing fields, duplicate ids...).
        deferred: prompts that failed for a reason a re-run may not meet (connection, timeout,
            server error, a lost worker); nothing was written for them, so a re-run retries them.
        last_deferred_error: the last of those errors, for the report.

    Example:
        >>> BatchSummary(already_done=0, sampled=9, failed=1, invalid=0).deferred
        0
    """

    already_done: int
    sampled: int
    failed: int
    invalid: int
    deferred: int = 0
    last_deferred_error: Optional[BaseException] = attrs.field(default=None, repr=False, eq=False)


def is_permanent(error: BaseException) -> bool:
    """Whether ``error`` belongs to its prompt (written to the output) rather than to the run."""
    if isinstance(error, RequestFailedError):
        return error.is_user_error
    return isinstance(error, (ValidationError, BadRequestError, UnprocessableEntityError))


class _Tally:
    """Counts outcomes and stops the run after ``abort_after`` transient failures in a row."""

    def __init__(self, abort_after: int) -> None:
        self.sampled = self.failed = self.invalid = self.deferred = 0
        self.streak = 0
        self.abort_after = abort_after
        self.last_error: Optional[BaseException] = None

    def defer(self, error: BaseException) -> None:
        self.deferred += 1
        self.streak += 1
        self.last_error = error
        if self.streak >= self.abort_after:
            raise BatchAbortedError(
                f"stopped after {self.streak} prompts in a row failed; the last with "
                f"{type(error).__name__}: {error}. Re-run the same command to resume.", deferred=self.deferred,
            ) from error

    def summary(self, already_done: int) -> BatchSummary:
        return BatchSummary(already_done, self.sampled, self.failed, self.invalid, self.deferred, self.last_error)


class BatchAbortedError(TinkexError):
    """:func:`run_batch` gave up: too many prompts in a row failed for reasons outside them.

    Attributes:
        deferred: prompts left for a re-run.

    Example:
        >>> BatchAbortedError("stopped", deferred=100).deferred
        100
    """

    def __init__(self, message: str, *, deferred: int = 0) -> None:
        super().__init__(message)
        self.deferred = deferred


def run_batch(
    client: Any,
    input_path: str,
    output_path: str,
    sampling_params: SamplingParams,
    *,
    num_samples: int = 1,
    max_in_flight: Optional[int] = None,
    executor: Any = None,
    progress: ProgressSpec = None,
    chunk_size: Optional[int] = None,
    timeout: Optional[float] = None,
    tokenizer: Optional[str] = None,
    abort_after: int = DEFAULT_ABORT_AFTER,
) -> BatchSummary:
    """Sample every line of a JSONL file into another, resumably (what ``tinkex batch`` runs).

    Lines whose id is already in ``output_path`` are skipped, so re-running after a crash or
    Ctrl-C finishes the job without writing any id twice. Input and output are streamed; memory
    holds only the in-flight prompts and a 16-byte digest per id (see :mod:`tinkex._batch_io`
    for both line formats). A prompt that fails for a reason of its own gets an error line; one
    that fails for a transient reason gets none (see :class:`BatchSummary`), and ``abort_after``
    such failures in a row stop the run with :class:`BatchAbortedError`.

    Args:
        tokenizer: the tokenizer name for the output ``text`` (default the client's).

    Example:
        >>> run_batch(client, "prompts.jsonl", "out.jsonl", types.SamplingParams(max_tokens=32))  # doctest: +SKIP
        BatchSummary(already_done=0, sampled=1000, failed=0, invalid=0, deferred=0)
    """
    _check(sampling_params, "record", max_in_flight, chunk_size)
    _check_paths(input_path, output_path)
    output, done = OutputFile.open(output_path)
    tally = _Tally(abort_after)
    try:
        total = max(0, count_lines(input_path) - len(done)) if wants_progress(progress) else None
        reporter = LazyProgress(progress, total)
        pending: Dict[int, Any] = {}
        items = _items(plan_lines(input_path, done, sampling_params), pending, output, tally, reporter)
        results = sample_many_unordered(
            client, items, sampling_params, num_samples=num_samples, max_in_flight=max_in_flight,
            on_error="record", progress=reporter, executor=executor, timeout=timeout,
            postprocess=Renderer(tokenizer or _tokenizer_name(client)), chunk_size=chunk_size,
        )
        for index, outcome in results:
            _write_result(output, pending.pop(index), outcome, tally)
    finally:
        output.close()
    return tally.summary(len(done))


def _check_paths(input_path: str, output_path: str) -> None:
    with open(input_path, "rb"):  # a missing input fails before the output file is created
        pass
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise ValidationError(f"the output file is the input file: {output_path!r}", field="output_path",
                              value=output_path)


def _items(entries: Iterable[Any], pending: Dict[int, Any], output: OutputFile, tally: _Tally,
           progress: LazyProgress) -> Iterator[BatchItem]:
    index = 0
    for entry in entries:
        if isinstance(entry, BadLine):
            output.write(entry.record())
            tally.invalid += 1
            progress.update(failed=True)
            continue
        pending[index] = entry.id
        index += 1
        yield entry.item


def _write_result(output: OutputFile, identifier: Any, outcome: Any, tally: _Tally) -> None:
    if not isinstance(outcome, BaseException):
        output.write({"id": identifier, **outcome})
        tally.sampled += 1
        tally.streak = 0
    elif is_permanent(outcome):
        output.write({"id": identifier, "error": error_record(outcome)})
        tally.failed += 1
        tally.streak = 0
    else:
        tally.defer(outcome)


def _tokenizer_name(client: Any) -> Optional[str]:
    try:
        return str(client.get_tokenizer().name)
    except Exception as exc:  # sampling works without one; only the text fields stay empty
        logger.warning("no tokenizer for %s (%s); output text will be null", client.base_model, exc)
        return None
