"""What a sampling client's initialisation builds, published whole once it is ready.

The worker pool, the client's own transport and the :class:`~tinkex._sampling.call.Sampler`
that runs calls on them. The pool's size is the client's in-flight capacity in default mode.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import attrs

from .._clock import Clock
from .._http import Transport
from .._session import Holder
from ..queue_state import QueueStateReporter
from ..telemetry import Telemetry
from .call import Sampler
from .snapshot import Snapshot
from .submit import Submitter
from .target import CLONE_SEQ_STRIDE, SamplingTarget

__all__ = ["Engine", "POLLER_MODE_WORKERS", "RETIRE_ABOVE", "build_engine", "worker_count"]

#: Workers in poller mode, where they only make short calls (a waiting sample holds none).
POLLER_MODE_WORKERS = 32


#: A default-mode pool that has grown past this many workers is replaced by a fresh one the next
#: time nothing is in flight: ThreadPoolExecutor never retires a worker, and after a burst each
#: sample would land on whichever idle (cold) worker has waited longest, costing a third more CPU.
RETIRE_ABOVE = 64


@attrs.frozen
class Engine:
    """The pool, its transport and the sampler of one ready client.

    Thread-safety: immutable; its parts are safe to share between threads.
    """

    executor: ThreadPoolExecutor
    transport: Transport
    sampler: Sampler
    workers: int = 1
    thread_prefix: str = "tinkex-sample"

    @property
    def retires_workers(self) -> bool:
        """Whether this pool can grow large enough to be worth replacing once idle (default mode)."""
        return self.workers > RETIRE_ABOVE

    def with_fresh_pool(self) -> Engine:
        """This engine with a new, empty pool of the same size (the caller shuts the old one down)."""
        executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.thread_prefix)
        return attrs.evolve(self, executor=executor)

    def close(self) -> None:
        self.sampler.close_pollers()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.transport.close()  # aborts reads still blocked, so the workers unwind now


def worker_count(state: Snapshot, max_workers: Optional[int]) -> int:
    """In default mode each in-flight sample holds a worker for its whole life, so the worker cap is the
    in-flight limit: the server's ``sample_max_concurrent_requests`` (2,000 by default), lowered by
    ``max_workers`` or ``RetryConfig.max_connections``. The pool starts threads only as samples need them.
    In poller mode a waiting sample holds no worker, so ``POLLER_MODE_WORKERS`` short-call workers serve
    any number in flight."""
    limit = state.client_config.sample_max_concurrent_requests
    if state.client_config.sample_use_retrieve_futures:  # workers only make short calls: few suffice
        limit = POLLER_MODE_WORKERS
    return max(1, min(max_workers or limit, limit, state.retry_config.max_connections or limit))


def build_engine(holder: Holder, target: SamplingTarget, state: Snapshot, first_seq: int, *,
                 max_workers: Optional[int], telemetry: Telemetry, observer: Any, clock: Clock) -> Engine:
    """The engine of a client whose session ``state`` was just resolved; its seq_ids start at ``first_seq``."""
    workers = worker_count(state, max_workers)
    prefix = f"tinkex-sample-{state.sampling_session_id}"  # per client: whose threads these are shows in a dump
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix)
    transport = holder.transport.derive(pool_size=workers + 4)
    reporter = QueueStateReporter(observer, {"session_id": state.session_id,
                                             "sampling_session_id": state.sampling_session_id})
    submitter = Submitter(transport, holder.limits, telemetry=telemetry, clock=clock, reporter=reporter)
    sampler = Sampler(submitter, target, holder.limits, telemetry=telemetry, reporter=reporter,
                      clock=clock, seq_ids=itertools.count(first_seq), clone_id=first_seq // CLONE_SEQ_STRIDE)
    return Engine(executor=executor, transport=transport, sampler=sampler, workers=workers, thread_prefix=prefix)
