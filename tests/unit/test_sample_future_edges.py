"""The sample future's cancellation with waiters, and sample requests whose prompt length is unknown."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import weakref
from typing import Any, List

import pytest

from tests.support.waiting import wait_until
from tinkex import types
from tinkex._sampling.future import SampleFuture
from tinkex._sampling.request import Extras, build_request
from tinkex.errors import ValidationError


def test_cancelling_a_running_sample_wakes_a_thread_waiting_on_it() -> None:
    future: SampleFuture[int] = SampleFuture()
    assert future.set_running_or_notify_cancel()
    outcome: List[Any] = []
    waiter = threading.Thread(target=lambda: outcome.append(concurrent.futures.wait([future], timeout=5)))
    waiter.start()
    wait_until(lambda: bool(future._waiters))  # concurrent.futures.wait has registered on the future
    assert future.cancel()
    waiter.join(5)
    (result,) = outcome
    assert result.done == {future} and not result.not_done
    assert future.cancelled() and future.cancel_event.is_set()


def test_a_cancelled_running_sample_ignores_its_late_outcome() -> None:
    """The worker may finish (or fail) after the caller cancelled: the future stays cancelled."""
    for finish in (lambda f: f.set_exception(RuntimeError("late")), lambda f: f.set_result(1)):
        future: SampleFuture[int] = SampleFuture()
        assert future.set_running_or_notify_cancel() and future.cancel()
        finish(future)
        assert future.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(0)


def test_an_image_without_expected_tokens_skips_the_prompt_length_checks() -> None:
    """With an image of unknown size the prompt's length is unknown here: the server checks it."""
    prompt = types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]),
                                      types.ImageChunk(data=b"\x89PNG", format="png")])
    targets = types.TensorData(data=[7] * 9, dtype="int64", shape=[9, 1])
    extras = Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=50, target_prompt_logprobs=targets)
    body = build_request(prompt, types.SamplingParams(max_tokens=2), 1, extras).to_json()
    assert body["prompt_logprobs_last_n"] == 50
    assert body["target_prompt_logprobs"]["shape"] == [9, 1]


def test_a_known_prompt_length_still_bounds_the_same_arguments() -> None:
    prompt = types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1, 2]),
                                      types.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=3)])
    extras = Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=50)
    with pytest.raises(ValidationError, match=r"at most len\(prompt\) - 1 = 4"):
        build_request(prompt, types.SamplingParams(max_tokens=2), 1, extras)


def _work_for(future: SampleFuture[str], ran_on: List[str]) -> Any:
    """The shape of the client's work: claim first, do nothing when another thread has it."""
    def work() -> None:
        if not future.claim():
            return
        ran_on.append(threading.current_thread().name)
        future.set_result("done")
    return work


def test_waiting_on_a_sample_no_worker_started_runs_it_on_the_waiting_thread() -> None:
    future: SampleFuture[str] = SampleFuture()
    ran_on: List[str] = []
    future.run_with(_work_for(future, ran_on))
    assert future.result() == "done"
    assert ran_on == [threading.current_thread().name]


def test_a_bounded_wait_never_runs_the_work_itself() -> None:
    future: SampleFuture[str] = SampleFuture()
    ran_on: List[str] = []
    future.run_with(_work_for(future, ran_on))
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.01)
    assert ran_on == [] and not future.running()


def test_work_a_worker_already_claimed_is_waited_for_not_run_twice() -> None:
    future: SampleFuture[str] = SampleFuture()
    ran_on: List[str] = []
    work = _work_for(future, ran_on)
    future.run_with(work)
    assert future.claim()  # a worker got there first
    assert not future.claim()  # nobody else can start it
    finisher = threading.Timer(0.05, lambda: future.set_result("by the worker"))
    finisher.start()
    assert future.result() == "by the worker"
    finisher.join()
    work()  # the pool's copy of the work, run late, does nothing
    assert ran_on == []


def test_a_cancelled_sample_is_neither_claimed_nor_run_by_its_waiter() -> None:
    future: SampleFuture[str] = SampleFuture()
    ran_on: List[str] = []
    future.run_with(_work_for(future, ran_on))
    assert future.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result()
    assert not future.claim() and ran_on == []


def test_a_started_or_cancelled_future_lets_go_of_its_work() -> None:
    """Batch callers keep thousands of finished futures: none may keep its request's work alive."""
    class Request:
        pass

    def future_holding(request: Request) -> SampleFuture[str]:
        future: SampleFuture[str] = SampleFuture()
        future.run_with(lambda: None if request is None else None)  # the work holds the request
        return future

    started_request, cancelled_request = Request(), Request()
    started, cancelled = future_holding(started_request), future_holding(cancelled_request)
    refs = [weakref.ref(started_request), weakref.ref(cancelled_request)]
    del started_request, cancelled_request
    assert started.claim() and cancelled.cancel()
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
