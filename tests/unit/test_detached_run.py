"""A sample in poller mode (protocol.md 4.10) as its chain of tasks, over the in-memory transport.

The chain is driven with an inline task runner (each step runs on the thread that schedules it),
so every path ends in exactly one ``settle`` call, checked here.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Tuple

from tests.support.loops import Rig, call, promise_for_seq, result_bytes
from tinkex._sampling.detached import DetachedRun
from tinkex._sampling.future import Cancelled
from tinkex.types import SampleResponse

FINISHED = {"completions": [{"state": "finished", "request_id": "req-0"}], "cursor": 1}


class Settled:
    """Records every ``settle`` call. Thread-safe: one lock; ``event`` is set on the first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: List[Tuple[Optional[SampleResponse], Optional[BaseException]]] = []
        self.event = threading.Event()

    def __call__(self, result: Optional[SampleResponse], error: Optional[BaseException]) -> None:
        with self.lock:
            self.calls.append((result, error))
        self.event.set()


def inline(task: Callable[..., None]) -> None:
    task()


def poller_rig() -> Rig:
    return Rig(sample_use_retrieve_futures=True)


def test_a_result_in_the_asample_answer_settles_without_polling() -> None:
    rig = poller_rig()
    rig.transport.on("asample", {"sequences": [{"tokens": [4, 5], "stop_reason": "length"}]})
    settled = Settled()
    DetachedRun(rig.sampler, rig.state, call(), settled, inline).start()
    ((result, error),) = settled.calls
    assert error is None and result is not None and result.sequences[0].tokens == [4, 5]
    assert rig.transport.calls_to("retrieve_futures") == [] and rig.sampler._pollers == {}


def test_a_waiting_sample_is_fetched_when_the_poller_reports_it() -> None:
    rig = poller_rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_futures", FINISHED, {"completions": [], "cursor": 1})
    rig.transport.on("retrieve_future", result_bytes((1, 2)))
    settled = Settled()
    DetachedRun(rig.sampler, rig.state, call(), settled, inline).start()
    assert settled.event.wait(5)
    rig.sampler.close_pollers()
    ((result, error),) = settled.calls
    assert error is None and result is not None
    assert result.sequences[0].tokens == [1, 2] and result.sequences[0].sequence_id == "req-0:seq:0"


def test_an_unexpected_exception_in_a_step_reaches_the_caller() -> None:
    """A bug below the chain (not a TinkexError) must end the sample, not vanish in a pool future."""
    rig = poller_rig()

    def broken(_call: Any) -> Any:
        raise KeyError("a bug")

    rig.transport.on("asample", broken)
    settled = Settled()
    DetachedRun(rig.sampler, rig.state, call(), settled, inline).start()
    ((result, error),) = settled.calls
    assert result is None and isinstance(error, KeyError)


def test_a_completion_after_the_pool_shut_down_is_dropped_quietly() -> None:
    rig = poller_rig()
    pool = ThreadPoolExecutor(max_workers=1)
    dropped = threading.Event()

    def shut_down_then_finish(_call: Any) -> dict:
        pool.shutdown(wait=True)  # the client closed while the sample waited
        return FINISHED

    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_futures", shut_down_then_finish, {"completions": [], "cursor": 1})
    settled = Settled()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "sample dropped" in record.getMessage():
                dropped.set()

    handler = Watch()
    logger = logging.getLogger("tinkex._sampling.detached")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        DetachedRun(rig.sampler, rig.state, call(), settled, pool.submit).start()
        assert dropped.wait(5)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        rig.sampler.close_pollers()
    assert settled.calls == []  # the client's close() cancels this future; nothing else settles it
    assert rig.transport.calls_to("retrieve_future") == []


def test_cancelling_a_waiting_sample_settles_it_as_cancelled_once() -> None:
    rig = poller_rig()
    in_poll, release = threading.Event(), threading.Event()

    def held(_call: Any) -> dict:
        in_poll.set()
        release.wait(5)
        return {"completions": [], "cursor": 0}

    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_futures", held)
    the_call = call()
    settled = Settled()
    DetachedRun(rig.sampler, rig.state, the_call, settled, inline).start()
    assert in_poll.wait(5)
    the_call.abort.abort()
    release.set()
    rig.sampler.close_pollers()
    ((result, error),) = settled.calls
    assert result is None and isinstance(error, Cancelled) and error.request_id == "req-0"


def test_cancelling_after_the_result_arrived_settles_nothing_more() -> None:
    rig = poller_rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_futures", FINISHED, {"completions": [], "cursor": 1})
    rig.transport.on("retrieve_future", result_bytes())
    the_call = call()
    settled = Settled()
    DetachedRun(rig.sampler, rig.state, the_call, settled, inline).start()
    assert settled.event.wait(5)
    the_call.abort.abort()  # the poller no longer waits for req-0: no Cancelled follows the result
    rig.sampler.close_pollers()
    ((result, error),) = settled.calls
    assert error is None and result is not None
