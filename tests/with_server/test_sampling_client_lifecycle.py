"""The SamplingClient's lifecycle edges against the real local server: use during and after
initialisation, a close that races it, a sample cancelled before a worker took it, the context
manager and coroutine accessors, and one client per sampler handle per process."""

from __future__ import annotations

import asyncio
from typing import Callable, Iterator

import pytest

import tinkex
from tinkex import types
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL

PROMPT = types.ModelInput.from_ints([72, 105, 33])
PARAMS = types.SamplingParams(max_tokens=4, seed=1)


@pytest.fixture
def service(local_server: LocalServer) -> Iterator[tinkex.ServiceClient]:
    with tinkex.ServiceClient(api_key=local_server.api_key, base_url=local_server.base_url) as client:
        yield client


def test_the_context_manager_closes_the_client_and_the_coroutines_answer(service: tinkex.ServiceClient) -> None:
    with service.create_sampling_client(base_model=DEFAULT_MODEL) as client:
        scored = client.compute_logprobs(PROMPT).result(30)

        async def main() -> tuple:
            return await client.compute_logprobs_async(PROMPT), await client.get_base_model_async()

        assert asyncio.run(main()) == (scored, DEFAULT_MODEL)
        assert not client.closed
    assert client.closed
    with pytest.raises(tinkex.ClientClosedError):
        client.sample(PROMPT, 1, PARAMS)


def test_a_sampler_handle_gives_one_client_per_process_until_it_is_closed(service: tinkex.ServiceClient) -> None:
    original = service.create_sampling_client(base_model=ECHO_MODEL)
    handle = original.get_sampler_handle()
    key = service.config.api_key
    first = tinkex.SamplingClient.from_sampler_handle(handle, api_key=key)
    try:
        assert tinkex.SamplingClient.from_sampler_handle(handle, api_key=key) is first
        assert first.sample(PROMPT, 1, PARAMS).result(30).sequences[0].tokens == \
            original.sample(PROMPT, 1, PARAMS).result(30).sequences[0].tokens
    finally:
        first.close()
    second = tinkex.SamplingClient.from_sampler_handle(handle, api_key=key)  # the closed one is not reused
    try:
        assert second is not first and not second.closed
        assert second.sampling_session_id == original.sampling_session_id
    finally:
        second.close()


def test_accessors_wait_for_initialisation_and_a_close_during_it_wins(
        fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="create_sampling_session.latency_ms=300")
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        waited = tinkex.SamplingClient(service._holder, base_model=ECHO_MODEL)
        assert waited.base_model == ECHO_MODEL  # blocks until the sampling session exists
        waited.close()

        closed_early = tinkex.SamplingClient(service._holder, base_model=ECHO_MODEL)
        closed_early.close()  # while create_sampling_session is still on its way
        with pytest.raises(tinkex.ClientClosedError, match="closed during initialisation"):
            closed_early.wait_ready(10)
        assert closed_early.closed
        with pytest.raises(tinkex.ClientClosedError):
            closed_early.sample(PROMPT, 1, PARAMS)


def test_a_sample_cancelled_before_a_worker_took_it_is_never_sent(
        fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="asample.latency_ms=300")
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL, max_workers=1)
        busy = client.sample(PROMPT, 1, PARAMS)  # holds the only worker for the 300 ms asample
        queued = client.sample(PROMPT, 1, PARAMS)
        assert queued.cancel() and queued.cancelled()
        after = client.sample(PROMPT, 1, PARAMS)  # runs after the cancelled task left the queue
        assert busy.result(30).sequences and after.result(30).sequences
        seq_ids = sorted(record["seq_id"] for record in server.records(client.sampling_session_id))
    assert seq_ids == [0, 1]  # the cancelled sample took no seq_id and sent nothing
