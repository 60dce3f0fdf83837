"""Running one ``sample``/``compute_logprobs`` call for its future, and settling that future.

The SamplingClient hands each call here on the thread that claims it (a pool worker, or the
caller waiting in ``result()``). Default mode runs the whole call on that thread; poller mode
starts a :class:`~tinkex._sampling.detached.DetachedRun` and returns. Either way the call ends
in :meth:`CallRunner.settle`: the result, or the error (counted, reported to telemetry,
with the API key removed), or a cancellation (counted, and told to the server).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

from .._clock import Clock
from .._config import redact_error
from .._session import Holder
from ..errors import ValidationError
from ..telemetry import Telemetry
from ..types import SampleResponse
from .call import Sampler
from .detached import DetachedRun
from .engine import Engine
from .future import Cancelled, SampleFuture
from .snapshot import SampleCall, Snapshot

__all__ = ["CallRunner", "Finish"]

logger = logging.getLogger(__name__)

#: Turns a call's SampleResponse into what its future holds (``None``: the response itself).
Finish = Optional[Callable[[SampleResponse], Any]]


class CallRunner:
    """Runs the calls of one SamplingClient and settles their futures.

    Thread-safety: holds no mutable state of its own (telemetry and the holder lock their
    own); any number of workers use it at once.

    Example:
        >>> runner = CallRunner(Telemetry(), SYSTEM_CLOCK, holder)  # doctest: +SKIP
        >>> runner.run(engine, future, call, None, state)  # doctest: +SKIP
    """

    def __init__(self, telemetry: Telemetry, clock: Clock, holder: Holder) -> None:
        self._telemetry = telemetry
        self._clock = clock
        self._holder = holder

    def run(self, engine: Engine, future: SampleFuture[Any], call: SampleCall, finish: Finish,
            state: Snapshot) -> None:
        """Run the call if this thread claims its future first (a pool worker, or the caller
        waiting in ``result()``); nothing when another thread did, or it was cancelled."""
        if not future.claim():
            return
        settle = functools.partial(self.settle, engine.sampler, future, finish, state, self._clock.monotonic())
        if state.client_config.sample_use_retrieve_futures:  # poller mode: no thread held while waiting
            DetachedRun(engine.sampler, state, call, settle, lambda task: engine.executor.submit(task)).start()
            return
        try:
            result = engine.sampler.execute(state, call)
        except (KeyboardInterrupt, SystemExit):  # only on a caller's thread running its own sample
            future.cancel()  # the caller abandons the sample, as it would abandon its wait
            raise
        except BaseException as exc:  # every failure reaches the future; nothing is swallowed
            settle(None, exc)
        else:
            settle(result, None)

    def settle(self, sampler: Sampler, future: SampleFuture[Any], finish: Finish, state: Snapshot, started: float,
               result: Optional[SampleResponse], error: Optional[BaseException]) -> None:
        """End the call: ``future`` gets the finished result, or the error; a cancellation is
        counted and, where the server enables it, sent as ``cancel_future``."""
        if isinstance(error, Cancelled):
            self._telemetry.record("cancelled")
            sampler.cancel_remote(error.request_id, state)
        elif error is not None or result is None:
            error = error or ValidationError("a sample ended without a result", field="result", value=None)
            self._record_failure(error)
            future.set_exception(redact_error(error, self._holder.config.api_key))
        else:
            self._telemetry.record("completed", latency=self._clock.monotonic() - started)
            future.set_result(finish(result) if finish is not None else result)

    def _record_failure(self, exc: BaseException) -> None:
        category = getattr(exc, "category", None) or type(exc).__name__
        self._telemetry.record("failure", category=category)
        self._holder.report_exception(exc)
