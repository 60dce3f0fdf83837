"""A server restart in the middle of a run: the local server stopped and started again on the
same port, losing every session, sampling session and request.

In-flight samples must either complete (the client re-creates the session and sampling
session the server forgot, and resubmits) or fail with a clear error; none may hang past its
deadline. A server that stays down makes every sample fail by its deadline.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, wait
from typing import Iterator, List, Tuple

import pytest

import tinkex
from tinkex import errors, types
from tinkex.server import LocalServer
from tinkex.server.models import load_model

KEY = "tml-restart-test-key"
ECHO = "tinkex/echo"
DEADLINE_S = 20.0
SLACK_S = 3.0  # scheduling slack on 2 busy cores; far below any poll or retry interval that matters


@pytest.fixture
def server() -> Iterator[LocalServer]:
    # Slow generations (40 ms per token, 2 at a time) so that requests are in flight at the restart.
    with LocalServer(models=[ECHO], poll_hold_s=1.0, token_delay_ms=40, max_concurrent_generations=2) as srv:
        yield srv


def jobs(count: int) -> List[Tuple[List[int], types.SamplingParams]]:
    return [([(7 * i + j) % 256 for j in range(5)], types.SamplingParams(max_tokens=8, seed=i)) for i in range(count)]


def expected(prompt: List[int], params: types.SamplingParams) -> List[List[int]]:
    return [s.tokens for s in load_model(ECHO).sample(prompt, params, 1)]


def submit_all(client: tinkex.SamplingClient, count: int) -> List[Tuple[Future, float]]:
    out = []
    for prompt, params in jobs(count):
        started = time.monotonic()
        out.append((client.sample(types.ModelInput.from_ints(prompt), 1, params, timeout=DEADLINE_S), started))
    return out


def resolved_at(futures: List[Tuple[Future, float]]) -> List[float]:
    """Record when each future resolves (done callbacks run in the resolving thread)."""
    stamps = [0.0] * len(futures)
    for index, (future, _) in enumerate(futures):
        future.add_done_callback(lambda _f, i=index: stamps.__setitem__(i, time.monotonic()))
    return stamps


def test_in_flight_samples_complete_after_a_restart(server: LocalServer) -> None:
    port = server.port
    with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url) as service:
        # 4 workers: most samples wait in the client and are first sent while the server is
        # down or after it forgot everything.
        client = service.create_sampling_client(base_model=ECHO, max_workers=4)
        old_ssid = client.sampling_session_id
        futures = submit_all(client, 24)
        stamps = resolved_at(futures)
        time.sleep(0.3)  # some done, some generating, some queued
        server.stop()
        time.sleep(0.5)  # connections refused for a while
        server.start()
        assert server.port == port
        wait([f for f, _ in futures], timeout=DEADLINE_S + SLACK_S)
        completed, failed = 0, []
        for (future, started), stamp, (prompt, params) in zip(futures, stamps, jobs(24)):
            assert future.done(), "a sample hung past its deadline"
            assert stamp - started <= DEADLINE_S + SLACK_S
            error = future.exception(0)
            if error is None:
                assert [s.tokens for s in future.result(0).sequences] == expected(prompt, params)
                completed += 1
            else:
                failed.append(error)
        # The only acceptable failures: requests the stopping server itself reported as failed.
        assert all(isinstance(e, errors.RequestFailedError) and "shutting down" in str(e) for e in failed), failed
        assert completed >= 24 - 4 - 2, (completed, failed)  # at most the ones in flight at the stop fail
        assert client.sampling_session_id != old_ssid
        # and the client keeps working on the new sampling session
        params = types.SamplingParams(max_tokens=3, seed=5)
        after = client.sample(types.ModelInput.from_ints([1, 2]), 1, params, timeout=DEADLINE_S)
        assert after.result(DEADLINE_S + SLACK_S).sequences[0].tokens == expected([1, 2], params)[0]
        records = server.records(client.sampling_session_id)
        assert records and all(r["generations"] == 1 for r in records)


def test_a_server_that_stays_down_fails_every_sample_by_its_deadline(server: LocalServer) -> None:
    with tinkex.ServiceClient(api_key=KEY, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO, max_workers=2)  # most are sent after the stop
        deadline = 3.0
        futures = []
        for prompt, params in jobs(12):
            futures.append((client.sample(types.ModelInput.from_ints(prompt), 1, params, timeout=deadline),
                            time.monotonic()))
        stamps = resolved_at(futures)
        time.sleep(0.2)
        server.stop()
        wait([f for f, _ in futures], timeout=deadline + SLACK_S)
        outcomes = []
        for (future, started), stamp in zip(futures, stamps):
            assert future.done(), "a sample hung past its deadline"
            assert stamp - started <= deadline + SLACK_S
            error = future.exception(0)
            outcomes.append(type(error).__name__ if error else "ok")
            if isinstance(error, errors.RequestFailedError):
                assert "shutting down" in str(error)  # answered by the stopping server itself
            elif error is not None:
                assert isinstance(error, errors.APIConnectionError), repr(error)
                assert server.base_url in str(error.url)
        assert "APITimeoutError" in outcomes or "APIConnectionError" in outcomes


def test_close_during_a_restart_returns_promptly(server: LocalServer) -> None:
    before = threading.active_count()
    service = tinkex.ServiceClient(api_key=KEY, base_url=server.base_url)
    client = service.create_sampling_client(base_model=ECHO)
    futures = submit_all(client, 8)
    server.stop()
    time.sleep(0.3)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5.0
    assert all(f.done() for f, _ in futures)
    limit = time.monotonic() + 5.0
    while threading.active_count() > before and time.monotonic() < limit:
        time.sleep(0.05)
    assert threading.active_count() <= before, [t.name for t in threading.enumerate()]
