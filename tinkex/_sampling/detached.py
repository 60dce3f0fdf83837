"""A sample in poller mode: short tasks on the pool, and no thread at all while it waits.

In default mode :meth:`Sampler.execute` runs a whole sample on one worker. In poller mode
(protocol.md 4.10) the same steps run as a chain of short tasks: submit on a worker, then wait
as an entry of the session's :class:`~tinkex._sampling.poller.CompletionPoller`, then fetch
the result on a worker when the poller reports it finished. Failures go through the same
:meth:`Sampler.after_failure` as default mode, so the retry, recovery and deadline rules are
one code path.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Optional

from .._policy import retries_whole_call
from ..errors import TinkexError
from ..types import SamplePromise, SampleResponse
from .call import Progress, Sampler
from .future import Cancelled, Final
from .poll import check_declared_size, poll_result
from .poller import Completion, CompletionPoller
from .snapshot import SampleCall, Snapshot

__all__ = ["DetachedRun", "Settle", "SubmitTask"]

logger = logging.getLogger(__name__)

#: Ends the sample: ``settle(result, None)`` or ``settle(None, error)``; a :class:`Cancelled` error
#: means the caller cancelled it.
Settle = Callable[[Optional[SampleResponse], Optional[BaseException]], None]
#: Runs a callable on the client's pool.
SubmitTask = Callable[[Callable[..., None]], Any]


class DetachedRun:
    """One sample's chain of tasks in poller mode.

    Thread-safety: its steps run one after another (each schedules the next), never at
    once, so its fields need no lock; ``_cancelled`` may run on the cancelling thread and
    only touches the poller (which locks).
    """

    def __init__(self, sampler: Sampler, state: Snapshot, call: SampleCall, settle: Settle,
                 submit_task: SubmitTask) -> None:
        self._sampler = sampler
        self._call = call
        self._settle = settle
        self._submit_task = submit_task
        self._progress = Progress(state)
        self._promise: Optional[SamplePromise] = None

    def start(self) -> None:
        """Submit (on the calling worker) and, once accepted, wait on the poller without a thread."""
        self._guarded(self._attempt)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        """Run a step; whatever it raises ends the sample (nothing is lost in the pool's futures)."""
        try:
            step(*args)
            return
        except Cancelled as cancelled:
            self._settle(None, cancelled)
            return
        except Final as final:
            error, retryable = final.error, False
        except TinkexError as exc:
            error, retryable = exc, retries_whole_call(exc)
        except BaseException as exc:  # a bug still reaches the caller's future
            self._settle(None, exc)
            return
        self._failed(error, retryable=retryable)  # outside the handlers: no Final chained to the error

    def _attempt(self) -> None:
        sampler, state = self._sampler, self._progress.state
        answer = sampler.submitter.asample(state, self._call, next(sampler.seq_ids))
        if isinstance(answer, SampleResponse):
            self._done(answer)
            return
        self._promise = answer
        poller = sampler.poller_for(state)
        self._call.abort.on_abort(lambda: self._cancelled(poller, answer.request_id))
        poller.wait(answer.request_id, self._call.deadline,
                    on_complete=lambda completion: self._later(self._fetch, poller, completion),
                    on_fail=lambda error: self._later(self._raise, error))

    def _later(self, step: Callable[..., None], *args: Any) -> None:
        try:
            self._submit_task(lambda: self._guarded(step, *args))
        except RuntimeError:  # the pool shut down: the client is closing and cancels this future
            logger.debug("sample dropped: the client's pool is shut down")

    @staticmethod
    def _raise(error: BaseException) -> None:
        raise error

    def _fetch(self, poller: CompletionPoller, completion: Completion) -> None:
        sampler, state = self._sampler, self._progress.state
        request_id = completion.request_id
        ctx = sampler.poll_context(state, self._call, request_id, allow_metadata_only=completion.size is None)
        budget = sampler.limits.response_budget
        hold = (budget.hold(completion.size, stop=sampler.stop, deadline=self._call.deadline, clock=sampler.clock)
                if completion.size else contextlib.nullcontext())
        try:
            check_declared_size(sampler.transport, request_id, completion.size or 0)
            with hold:
                result = poll_result(ctx, request_id)
        finally:
            poller.acknowledge(request_id)
            sampler.reporter.forget(request_id)
        promise = self._promise
        self._done(result.with_sequence_ids(promise.sample_sequence_ids or () if promise else ()))

    def _done(self, result: SampleResponse) -> None:
        self._sampler.last_progress = self._sampler.clock.monotonic()
        self._settle(result, None)

    def _failed(self, error: BaseException, *, retryable: bool) -> None:
        try:
            self._sampler.after_failure(self._progress, self._call, error, retryable=retryable)
        except BaseException as final:  # the call is over
            self._settle(None, final)
            return
        self._guarded(self._attempt)  # on this worker: the whole-call delay was slept already

    def _cancelled(self, poller: CompletionPoller, request_id: str) -> None:
        if poller.forget(request_id):  # it was waiting: no task of ours will run again
            self._later(self._raise, Cancelled(request_id))
