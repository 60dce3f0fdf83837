"""Running a JSONL file of prompts into another, resumably: :func:`run_batch` (what ``tinkex batch`` runs)."""

from __future__ import annotations

import contextlib
import logging
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, Optional

import attrs

from ..errors import (
    APIStatusError,
    BadRequestError,
    RequestFailedError,
    TinkexError,
    UnprocessableEntityError,
    ValidationError,
)
from ..types import SamplingParams
from ._exec import BatchItem
from ._input import DEFAULT_MAX_LINE_BYTES, BadLine, check_input, count_lines, open_input, plan_lines
from ._output import OutputFile, check_output
from ._progress import LazyProgress, ProgressSpec, wants_progress
from ._records import Renderer, error_record
from ._sample import check_arguments, sample_many_unordered

if TYPE_CHECKING:
    from ..sampling_client import SamplingClient

__all__ = ["BatchSummary", "BatchAbortedError", "run_batch", "is_permanent", "check_paths", "DEFAULT_ABORT_AFTER",
           "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_LINE_BYTES"]

logger = logging.getLogger(__name__)

DEFAULT_ABORT_AFTER = 100
DEFAULT_MAX_REQUEST_BYTES = 10 << 20  # the local server's body limit; a 413 from a stricter server is caught too


@attrs.frozen
class BatchSummary:
    """What a :func:`run_batch` call did.

    Attributes:
        already_done: lines found in the output file at start (skipped).
        sampled: output lines written with sequences.
        failed: output lines written with an error that retrying cannot fix (a bad prompt, a
            user-category failure, a 400/413/422 answer, a request over ``max_request_bytes``).
        invalid: input lines reported as errors (bad JSON, missing fields, duplicate ids...).
        deferred: prompts that failed for a reason a re-run may not meet (connection, timeout,
            server error, a lost worker); nothing was written for them, so a re-run retries them.
        last_deferred_error: the last of those errors, for the report.
        first_error: the first error written to the output by this run (invalid or failed), for the report.

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
    first_error: Optional[BaseException] = attrs.field(default=None, repr=False, eq=False)


def is_permanent(error: BaseException) -> bool:
    """Whether ``error`` belongs to its prompt (written to the output) rather than to the run.

    A 413 (request too large) is the prompt's: sending it again would only be refused again.

    Example:
        >>> is_permanent(APIStatusError("too large", status_code=413)), is_permanent(TimeoutError())
        (True, False)
    """
    if isinstance(error, RequestFailedError):
        return error.is_user_error
    if isinstance(error, APIStatusError) and error.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        return True
    return isinstance(error, (ValidationError, BadRequestError, UnprocessableEntityError))


class _Tally:
    """Counts outcomes and stops the run after ``abort_after`` transient failures in a row."""

    def __init__(self, abort_after: int) -> None:
        self.sampled = self.failed = self.invalid = self.deferred = 0
        self.streak = 0
        self.abort_after = abort_after
        self.last_error: Optional[BaseException] = None
        self.first_error: Optional[BaseException] = None

    def written_error(self, error: BaseException, invalid: bool) -> None:
        if invalid:
            self.invalid += 1
        else:
            self.failed += 1
            self.streak = 0
        if self.first_error is None:
            self.first_error = error

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
        return BatchSummary(already_done, self.sampled, self.failed, self.invalid, self.deferred, self.last_error,
                            self.first_error)


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
    client: SamplingClient,
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
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_request_bytes: Optional[int] = DEFAULT_MAX_REQUEST_BYTES,
) -> BatchSummary:
    """Sample every line of a JSONL file into another, resumably (what ``tinkex batch`` runs).

    Lines whose id is already in ``output_path`` are skipped, so re-running after a crash or
    Ctrl-C finishes the job without writing any id twice. Input and output are streamed; memory
    holds only the in-flight prompts and a 16-byte digest per id (see the package docstring
    for both line formats). A prompt that fails for a reason of its own gets an error line; one
    that fails for a transient reason gets none (see :class:`BatchSummary`), and ``abort_after``
    such failures in a row stop the run with :class:`BatchAbortedError`.

    The input is read once, so it may be a pipe or a FIFO (progress then has no total). An
    existing output that tinkex batch did not write, or one that is not a regular file, is
    refused and left as it was.

    Args:
        tokenizer: the tokenizer name for the output ``text`` (default the client's).
        max_line_bytes: input lines longer than this become error lines, unread.
        max_request_bytes: prompts whose request would be larger get an error line, unsent
            (default 10 MiB, the local server's limit; None sends everything).

    Raises:
        ValidationError: a bad argument, an input that is a device, an output that is not a
            regular file or not a tinkex batch output.

    Example:
        >>> run_batch(client, "prompts.jsonl", "out.jsonl", types.SamplingParams(max_tokens=32))  # doctest: +SKIP
        BatchSummary(already_done=0, sampled=1000, failed=0, invalid=0, deferred=0)
    """
    check_arguments(sampling_params, "record", max_in_flight=max_in_flight, chunk_size=chunk_size,
                    max_line_bytes=max_line_bytes, max_request_bytes=max_request_bytes)
    check_paths(input_path, output_path)
    with open_input(input_path) as source:  # before the output, so a missing input creates no file
        output, done = OutputFile.open(output_path)
        tally = _Tally(abort_after)
        try:
            lines = count_lines(source) if wants_progress(progress) else None
            reporter = LazyProgress(progress, None if lines is None else max(0, lines - len(done)))
            pending: Dict[int, Any] = {}
            entries = plan_lines(source, done, sampling_params, max_line_bytes)
            results = sample_many_unordered(
                client, _items(entries, pending, output, tally, reporter), sampling_params, num_samples=num_samples,
                max_in_flight=max_in_flight, on_error="record", progress=reporter, executor=executor, timeout=timeout,
                postprocess=Renderer(tokenizer or _tokenizer_name(client)), chunk_size=chunk_size,
                max_request_bytes=max_request_bytes,
            )
            with contextlib.closing(results):  # cancel outstanding work now, while the executor is still open
                for index, outcome in results:
                    _write_result(output, pending.pop(index), outcome, tally)
        finally:
            output.close()
    return tally.summary(len(done))


def check_paths(input_path: str, output_path: str) -> None:
    """Refuse, before anything starts, paths a run cannot use; nothing is opened for writing.

    Raises:
        OSError: the input is missing or unreadable.
        ValidationError: the input is a device; the output is the input, not a regular file, or
            not a tinkex batch output.
    """
    check_input(input_path)
    check_output(output_path)
    if os.path.exists(output_path) and os.path.samefile(input_path, output_path):
        raise ValidationError(f"the output file is the input file: {output_path!r}", field="output_path",
                              value=output_path)


def _items(entries: Iterable[Any], pending: Dict[int, Any], output: OutputFile, tally: _Tally,
           progress: LazyProgress) -> Iterator[BatchItem]:
    index = 0
    for entry in entries:
        if isinstance(entry, BadLine):
            output.write(entry.record())
            tally.written_error(entry.error, invalid=True)
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
        tally.written_error(outcome, invalid=False)
    else:
        tally.defer(outcome)


def _tokenizer_name(client: SamplingClient) -> Optional[str]:
    try:
        return str(client.get_tokenizer().name)
    except Exception as exc:  # sampling works without one; only the text fields stay empty
        logger.warning("no tokenizer for %s (%s); output text will be null", client.base_model, exc)
        return None
