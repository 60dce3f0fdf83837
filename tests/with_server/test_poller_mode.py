"""Poller mode end to end on LocalServer (protocol.md 4.10): the server announces
``sample_use_retrieve_futures`` and waiting samples hold no thread."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import Any, Callable, List

import pytest
import requests

import tinkex
from tests.support.waiting import wait_until
from tinkex import errors, types
from tinkex.server import LocalServer
from tinkex.server.model import ECHO_MODEL

PROMPT = types.ModelInput.from_ints([5, 6, 7])
POLLER = {"sample_use_retrieve_futures": True}



def sample_threads(client: Any = None) -> List[str]:
    prefix = "tinkex-sample" if client is None else f"tinkex-sample-{client.sampling_session_id}"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def poller_threads(client: Any = None) -> List[str]:
    prefix = "tinkex-poller" if client is None else f"tinkex-poller-{client.sampling_session_id}"
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def results_of(server: LocalServer, count: int, **client_kwargs: Any) -> List[Any]:
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL, **client_kwargs)
        futures = [client.sample(PROMPT, 2, types.SamplingParams(max_tokens=6, seed=i)) for i in range(count)]
        return [f.result(60) for f in futures]


def tokens(results: List[Any]) -> List[Any]:
    return [[tuple(s.tokens) for s in r.sequences] for r in results]


def test_poller_mode_gives_the_default_mode_results(fresh_server: Callable[..., LocalServer]) -> None:
    plain = results_of(fresh_server(), 40)
    polled_server = fresh_server(client_config=POLLER)
    polled = results_of(polled_server, 40)
    assert tokens(polled) == tokens(plain)
    assert polled_server.stats()["requests"].get("retrieve_futures", 0) >= 1
    assert all(s.sequence_id for r in polled for s in r.sequences)


def test_waiting_samples_hold_no_thread(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(client_config=POLLER, token_delay_ms=100, max_concurrent_generations=1000, poll_hold_s=10)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=20, seed=i)) for i in range(400)]
        peak = 0
        while not all(f.done() for f in futures):
            peak = max(peak, len(sample_threads(client)))
            time.sleep(0.02)
        assert all(len(f.result().sequences[0].tokens) == 20 for f in futures)
        assert len(poller_threads(client)) == 1
    assert peak <= 64, f"{peak} worker threads for 400 waiting samples"
    assert poller_threads(client) == []


def test_a_410_resubmits_with_a_new_seq_id(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(client_config=POLLER, faults="seed=4,retrieve_future.410=0.3")
    assert len(results_of(server, 30)) == 30
    assert server.stats()["statuses"].get("retrieve_future 410", 0) > 0


def test_a_poller_that_loses_its_connection_recovers(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(client_config=POLLER, faults="seed=2,retrieve_futures.drop_before=0.3,"
                                                       "retrieve_futures.503=0.2")
    assert len(results_of(server, 30)) == 30
    assert server.stats()["faults_total"] > 0


def test_a_failed_entry_is_a_request_failed_error(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(client_config=POLLER, token_delay_ms=100, poll_hold_s=10)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=200))
        wait_until(lambda: any(r["state"] != "done" for r in server.records()))
        (record,) = server.records()
        # someone else's cancel_future (the same key) makes the server report the request failed
        answer = requests.post(f"{server.base_url}/api/v1/cancel_future", json={"request_id": record["request_id"]},
                               headers={"X-API-Key": server.api_key}, timeout=10)
        assert answer.status_code == 200
        with pytest.raises(errors.RequestFailedError) as raised:
            future.result(10)
    assert raised.value.request_id == record["request_id"]


def test_a_deadline_holds_while_waiting_on_the_poller(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(client_config=POLLER, token_delay_ms=100, poll_hold_s=10)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        started = time.monotonic()
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=200), timeout=1.0)
        with pytest.raises(errors.APITimeoutError):
            future.result(10)
        assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("how", ["cancel", "close"])
def test_cancel_and_close_while_waiting(fresh_server: Callable[..., LocalServer], how: str) -> None:
    server = fresh_server(client_config=POLLER, dynamic_config={"sample_cancel_enabled": True},
                          token_delay_ms=100, poll_hold_s=10)
    service = tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url)
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=300, seed=i)) for i in range(5)]
    wait_until(lambda: server.stats()["requests"].get("retrieve_futures", 0) >= 1)
    time.sleep(0.3)
    started = time.monotonic()
    if how == "cancel":
        assert futures[0].cancel()
        wait_until(lambda: server.stats()["cancels"] >= 1, timeout=5)
        assert time.monotonic() - started < 0.5
        with pytest.raises(CancelledError):
            futures[0].result(0)
    service.close()
    assert time.monotonic() - started < 2.0
    assert all(f.cancelled() for f in futures)
    wait_until(lambda: poller_threads(client) == [] and sample_threads(client) == [], timeout=5)
