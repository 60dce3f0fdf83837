"""The local server's bookkeeping without HTTP: the ``Store`` (records, sessions, tombstones and
their expiry on a hand-moved clock) and the ``Scheduler`` (the FIFO queue, cancels, and how a
generation that fails or is stopped on the worker pool is reported), on a private event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, List, Optional, Sequence

import pytest

from tinkex.server._plan import GenerationPlan
from tinkex.server._settings import ServerSettings
from tinkex.server._stats import Stats
from tinkex.server._workers import DaemonExecutor
from tinkex.server.models.base import Generation
from tinkex.server.models.echo import EchoModel
from tinkex.server.scheduler import Scheduler
from tinkex.server.store import CANCELLED, DONE, EXPIRED, FAILED, FINISHED, QUEUED, RUNNING, RequestRecord, Store
from tinkex.types import SamplingParams

ECHO = EchoModel()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def plan(prompt: Optional[List[int]] = None, model: Any = ECHO, max_tokens: int = 4) -> GenerationPlan:
    return GenerationPlan(model=model, prompt=list(b"hello") if prompt is None else prompt,
                          params=SamplingParams(max_tokens=max_tokens, seed=1), work_tokens=max_tokens)


def record_of(store: Store, *, session: Any = None, sampling_session_id: Optional[str] = None,
              seq_id: Optional[int] = None, owner: str = "key-a", **plan_args: Any) -> RequestRecord:
    record = RequestRecord(owner=owner, session=session, sampling_session_id=sampling_session_id, seq_id=seq_id,
                           plan=plan(**plan_args), model_name=ECHO.name, num_samples=1, now=store.clock(), work=4)
    store.add_record(record)
    return record


# ---------------------------------------------------------------- the store


def test_a_request_without_a_sampling_session_has_no_pair_and_no_session_slot() -> None:
    clock = Clock()
    store = Store(ServerSettings(promise_expiry_s=10, tombstone_s=20), clock)
    record = record_of(store)
    assert record.pair is None and store.pairs == {}
    assert store.pending_work["key-a"] == 4
    store.completed(record)
    assert store.pending_work["key-a"] == 0 and record.expires_at == 110.0
    clock.now = 110.0
    _expired, forgotten = store.sweep()
    assert forgotten == [record]
    store.forget(record)  # forgetting twice changes nothing
    with pytest.raises(Exception) as info:
        store.record("key-a", record.request_id)
    assert getattr(info.value, "status", None) == 410
    clock.now = 130.0
    store.sweep()  # the tombstone goes; a request without a pair leaves no pair behind
    with pytest.raises(Exception) as info:
        store.record("key-a", record.request_id)
    assert getattr(info.value, "status", None) == 404


def test_ending_a_session_twice_forgets_its_records_once() -> None:
    store = Store(ServerSettings(), Clock())
    session = store.new_session("key-a", {})
    sampler = store.new_sampling_session("key-a", session.session_id, 0, ECHO.name, None)
    record = record_of(store, session=session, sampling_session_id=sampler.sampling_session_id, seq_id=0)
    assert store.end_session(session, FINISHED, "done") == [record]
    assert store.end_session(session, EXPIRED, "late") == []
    assert session.state == FINISHED and session.end_reason == "done"
    assert store.active_sessions["key-a"] == 0


def test_a_buried_session_takes_its_sampling_sessions_with_it() -> None:
    clock = Clock()
    store = Store(ServerSettings(tombstone_s=50, session_expiry_s=1000), clock)
    session = store.new_session("key-a", {})
    sampler = store.new_sampling_session("key-a", session.session_id, 3, ECHO.name, None)
    record = record_of(store, session=session, sampling_session_id=sampler.sampling_session_id, seq_id=7)
    store.end_session(session, FINISHED, "client finished it")
    clock.now += 49
    store.sweep()
    with pytest.raises(Exception) as info:
        store.live_session("key-a", session.session_id)
    assert getattr(info.value, "status", None) == 410 and "was finished (client finished it)" in str(info.value)
    clock.now += 1
    store.sweep()
    assert session.session_id not in store.sessions
    assert sampler.sampling_session_id not in store.sampling_sessions
    assert store.find_pair((sampler.sampling_session_id, 7)) is None
    with pytest.raises(Exception) as info:
        store.record("key-a", record.request_id)
    assert getattr(info.value, "status", None) == 404


def test_a_resubmitted_pair_outlives_the_tombstone_of_its_first_attempt() -> None:
    clock = Clock()
    store = Store(ServerSettings(tombstone_s=5), clock)
    session = store.new_session("key-a", {})
    sampler = store.new_sampling_session("key-a", session.session_id, 0, ECHO.name, None)
    first = record_of(store, session=session, sampling_session_id=sampler.sampling_session_id, seq_id=1)
    second = RequestRecord(owner="key-a", session=session, sampling_session_id=sampler.sampling_session_id,
                           seq_id=1, plan=plan(), model_name=ECHO.name, num_samples=1, now=clock.now)
    store.replace_pair(first, second)
    clock.now += 5
    store.sweep()
    assert store.find_pair(second.pair or ("", 0)) == second.request_id


# ---------------------------------------------------------------- the scheduler


class BrokenModel(EchoModel):
    """A model whose generation fails with a bug (not a validation error)."""

    def start(self, prompt: Sequence[int], params: SamplingParams, sample_index: int = 0) -> Generation:
        raise RuntimeError("the model is broken")


class ObservedEcho(EchoModel):
    """The echo model, telling the test when a worker starts generating with it."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def start(self, prompt: Sequence[int], params: SamplingParams, sample_index: int = 0) -> Generation:
        self.started.set()
        return super().start(prompt, params, sample_index)


def on_loop(scenario: Callable[[Scheduler, Store, DaemonExecutor], Any], *, workers: int = 1,
            max_concurrent: int = 1, delay_s: float = 0.0) -> None:
    """Run ``scenario`` on a fresh loop with a scheduler over a real worker pool."""

    async def main() -> None:
        store = Store(ServerSettings(), Clock())
        executor = DaemonExecutor(workers, name="test-generate")
        scheduler = Scheduler(loop=asyncio.get_running_loop(), executor=executor, max_concurrent=max_concurrent,
                              store=store, stats=Stats(), token_delay_s=delay_s, inline_cheap=False)
        try:
            await scheduler_scenario(scenario, scheduler, store, executor)
        finally:
            executor.shutdown(cancel_futures=True, timeout=10)

    asyncio.run(main())


async def scheduler_scenario(scenario: Any, scheduler: Scheduler, store: Store, executor: DaemonExecutor) -> None:
    await scenario(scheduler, store, executor)


def test_a_generation_failing_validation_on_a_worker_is_blamed_on_the_user() -> None:
    async def scenario(scheduler: Scheduler, store: Store, _executor: DaemonExecutor) -> None:
        record = record_of(store, prompt=[300])  # outside the byte vocabulary: the model refuses it
        scheduler.submit(record)
        assert await scheduler.wait(record, 10)
        assert (record.state, record.category) == (FAILED, "user")
        assert "300" in (record.error or "")
        assert record.plan is not None  # only a finished (DONE) request drops its plan

    on_loop(scenario)


def test_a_generation_crashing_on_a_worker_is_a_logged_server_error(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(scheduler: Scheduler, store: Store, _executor: DaemonExecutor) -> None:
        record = record_of(store, model=BrokenModel())
        scheduler.submit(record)
        assert await scheduler.wait(record, 10)
        assert (record.state, record.category) == (FAILED, "server")
        assert record.error == "internal error while generating (RuntimeError)"

    with caplog.at_level(logging.ERROR, logger="tinkex.server.scheduler"):
        on_loop(scenario)
    assert "the model is broken" in caplog.text


def test_a_request_cancelled_while_queued_is_skipped_when_a_slot_frees() -> None:
    async def scenario(scheduler: Scheduler, store: Store, _executor: DaemonExecutor) -> None:
        running, queued, last = (record_of(store) for _ in range(3))
        for record in (running, queued, last):
            scheduler.submit(record)
        assert (running.state, queued.state, last.state) == (RUNNING, QUEUED, QUEUED)
        state, reason = scheduler.queue_state(last)
        assert state == "paused_capacity" and "all 1 generation slots are busy, 2 request(s) queued" in (reason or "")
        assert scheduler.cancel(queued)
        assert not scheduler.cancel(queued)  # no longer pending
        assert scheduler.queued == 1
        assert not await scheduler.wait(running, 0)  # no time given: still generating
        assert scheduler.cancel(running)  # its worker wakes from the simulated delay
        assert await scheduler.wait(last, 10)
        assert (running.state, queued.state, last.state) == (CANCELLED, CANCELLED, DONE)
        assert queued.generations == 1 and scheduler.running == 0 and scheduler.queued == 0
        assert last.response is not None and len(last.response.sequences[0].tokens) == 4

    on_loop(scenario, delay_s=0.02)


def test_work_the_pool_drops_at_shutdown_is_reported_stopped() -> None:
    async def scenario(scheduler: Scheduler, store: Store, executor: DaemonExecutor) -> None:
        observed = ObservedEcho()
        busy = record_of(store, model=observed)
        scheduler.submit(busy)
        for _ in range(1000):
            if observed.started.is_set():
                break
            await asyncio.sleep(0.001)
        cancelled, dropped = record_of(store), record_of(store)
        scheduler.submit(cancelled)
        scheduler.submit(dropped)  # three slots, one busy worker: two wait inside the pool
        assert scheduler.running == 3
        scheduler.cancel(cancelled)
        executor.shutdown(wait=False, cancel_futures=True)
        assert await scheduler.wait(dropped, 10)
        assert (dropped.state, dropped.error, dropped.category) == (CANCELLED, "generation was stopped", "unknown")
        assert (cancelled.state, cancelled.error) == (CANCELLED, "request was cancelled")
        scheduler.cancel(busy, "the server is shutting down", category="server")
        for _ in range(100):
            if scheduler.running == 0:
                break
            await asyncio.sleep(0.01)
        assert scheduler.running == 0 and (busy.state, busy.category) == (CANCELLED, "server")

    on_loop(scenario, max_concurrent=3, delay_s=5.0)


def test_an_answer_read_whole_waits_its_decoding_time_on_a_timer_not_on_a_worker() -> None:
    async def scenario(scheduler: Scheduler, store: Store, executor: DaemonExecutor) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first, second = record_of(store, max_tokens=4), record_of(store, max_tokens=4)
        scheduler.submit(first)
        scheduler.submit(second)  # two slots, ONE worker: both can only overlap if neither holds it
        assert scheduler.running == 2
        assert await scheduler.wait(first, 10) and await scheduler.wait(second, 10)
        took = loop.time() - started
        # 4 tokens x 0.1 s each; run one after the other on the worker they would take 0.8 s
        assert 0.4 <= took < 0.7, took
        assert (first.state, second.state) == (DONE, DONE) and scheduler.running == 0

    on_loop(scenario, workers=1, max_concurrent=2, delay_s=0.1)


def test_a_cancel_while_decoding_frees_the_slot_at_once() -> None:
    async def scenario(scheduler: Scheduler, store: Store, _executor: DaemonExecutor) -> None:
        slow, waiting = record_of(store, max_tokens=50), record_of(store, max_tokens=1)
        scheduler.submit(slow)  # 50 tokens x 0.2 s: 10 s of decoding
        scheduler.submit(waiting)
        assert waiting.state == QUEUED
        for _ in range(1000):  # until the worker has generated and the timer holds the slot
            if scheduler._decoding:
                break
            await asyncio.sleep(0.001)
        assert slow in scheduler._decoding and slow.state == RUNNING
        assert scheduler.cancel(slow)
        assert slow.state == CANCELLED and not scheduler._decoding
        assert waiting.state == RUNNING  # the freed slot went to the queued request at once
        assert await scheduler.wait(waiting, 5) and waiting.state == DONE
        assert scheduler.running == 0

    on_loop(scenario, delay_s=0.2)
