"""Samples in flight at a realistic latency: capacity beyond any thread constant, and instant cancel."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from typing import Callable

import pytest

import tinkex
from tests.support.waiting import wait_until
from tinkex import types
from tinkex.server import LocalServer
from tinkex.server.model import ECHO_MODEL

PROMPT = types.ModelInput.from_ints([1, 2, 3])



def test_more_samples_in_flight_than_the_former_thread_cap(fresh_server: Callable[..., LocalServer]) -> None:
    """600 samples of 4 s each: the server holds more than 256 of them at once (the old pool
    stopped at 256 workers, so the rest waited client-side), and every one completes."""
    server = fresh_server(models=(ECHO_MODEL,), token_delay_ms=400, poll_hold_s=10,
                          max_concurrent_generations=2000)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        params = types.SamplingParams(max_tokens=10, seed=1)
        futures = [client.sample(PROMPT, 1, params) for _ in range(600)]
        peak = 0
        while not all(f.done() for f in futures):
            peak = max(peak, sum(1 for r in server.records() if r["state"] != "done"))
            if peak > 500:
                break
            time.sleep(0.05)
        results = [future.result(120) for future in futures]
        workers = [t for t in threading.enumerate() if t.name.startswith(f"tinkex-sample-{client.sampling_session_id}")]
    assert all(len(r.sequences[0].tokens) == 10 for r in results)
    assert peak > 256, f"at most {peak} samples were in flight at once"
    assert len(workers) > 256


def test_max_workers_still_caps_in_flight(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=(ECHO_MODEL,), token_delay_ms=100, poll_hold_s=10)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL, max_workers=2)
        futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=3)) for _ in range(6)]
        concurrent.futures.wait(futures, 30)
        workers = [t for t in threading.enumerate() if t.name.startswith(f"tinkex-sample-{client.sampling_session_id}")]
    assert all(f.exception() is None for f in futures)
    assert len(workers) <= 2


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_reaches_the_server_within_half_a_second_while_a_poll_is_held(
        fresh_server: Callable[..., LocalServer], how: str) -> None:
    server = fresh_server(models=(ECHO_MODEL,), token_delay_ms=100, poll_hold_s=10,
                          dynamic_config={"sample_cancel_enabled": True})
    service = tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url)
    client = service.create_sampling_client(base_model=ECHO_MODEL, max_workers=1)
    future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=300, seed=1))  # ~30 s of decoding
    wait_until(lambda: server.stats()["requests"].get("retrieve_future", 0) >= 1)
    time.sleep(0.3)  # the poll is now held by the server (for up to 10 s)
    started = time.monotonic()
    if how == "cancel":
        assert future.cancel()
    else:
        service.close()
    wait_until(lambda: server.stats()["cancels"] >= 1, timeout=5)
    assert time.monotonic() - started < 0.5
    assert future.cancelled()
    if how == "cancel":  # the only worker is free at once: the next sample runs now, not after the hold
        quick = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=2))
        assert len(quick.result(3).sequences[0].tokens) == 2
        assert time.monotonic() - started < 3
    service.close()


def workers_of(client: tinkex.SamplingClient) -> int:
    prefix = f"tinkex-sample-{client.sampling_session_id}"
    return sum(1 for thread in threading.enumerate() if thread.name.startswith(prefix) and thread.is_alive())


def test_after_a_burst_the_idle_workers_retire_and_sampling_goes_on(fresh_server: Callable[..., LocalServer]) -> None:
    """A burst of 200 overlapping samples grows the pool to ~200 workers; the next call, with
    nothing in flight, swaps in a fresh pool, and the old workers exit."""
    server = fresh_server(models=(ECHO_MODEL,), token_delay_ms=50, poll_hold_s=10, max_concurrent_generations=500)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        params = types.SamplingParams(max_tokens=4, seed=1)
        burst = [client.sample(PROMPT, 1, params) for _ in range(200)]
        assert all(len(f.result(60).sequences[0].tokens) == 4 for f in burst)
        grown = workers_of(client)
        one = client.sample(PROMPT, 1, params).result(30)
        wait_until(lambda: workers_of(client) <= 2, timeout=10)
        again = [client.sample(PROMPT, 1, params).result(30) for _ in range(3)]
    assert grown > 64, f"the burst only grew the pool to {grown} workers"
    assert [len(r.sequences[0].tokens) for r in (one, *again)] == [4, 4, 4, 4]


def test_callers_racing_a_pool_swap_all_get_their_samples(fresh_server: Callable[..., LocalServer],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Waves of overlapping samples from several threads: each quiet moment swaps the pool while
    other threads are about to submit to the old one; none of them may see the client closed."""
    server = fresh_server(models=(ECHO_MODEL,), token_delay_ms=10, poll_hold_s=10, max_concurrent_generations=500)
    errors: list = []
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        params = types.SamplingParams(max_tokens=2, seed=1)

        quiet = threading.Barrier(4)  # every wave starts with nothing in flight: a swap, raced by the others

        def waves() -> None:
            for _ in range(6):
                try:
                    quiet.wait(60)
                    futures = [client.sample(PROMPT, 1, params) for _ in range(60)]
                    assert all(len(f.result(60).sequences[0].tokens) == 2 for f in futures)
                except BaseException as exc:  # collected: an assertion in a thread would be lost
                    errors.append(exc)

        callers = [threading.Thread(target=waves) for _ in range(4)]
        with caplog.at_level(logging.DEBUG, logger="tinkex.sampling_client"):
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(120)
    assert errors == []
    assert not any(caller.is_alive() for caller in callers)
    assert "Replaced an idle pool" in caplog.text  # the race this test is about did happen
