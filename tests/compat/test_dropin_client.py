"""The drop-in client methods against real HTTP servers: what reaches the wire and what comes back.

``FakeTinker`` (a scripted server on 127.0.0.1) records request bodies; ``LocalServer`` samples
for real. Neither needs the official SDK.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Iterator, List

import pytest

import tinkex
from tinkex.server import LocalServer
from tinkex.types import QueueState

from ..fake_tinker import FakeTinker, result_answer

MODEL = "tinkex/ngram-small"
PROMPT = tinkex.ModelInput.from_ints(list(b"Drop-in "))
PARAMS = tinkex.SamplingParams(max_tokens=4, seed=1)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(models=[MODEL]) as local:
        yield local


def test_official_arguments_reach_create_session_and_the_sample_body() -> None:
    with FakeTinker() as fake:
        fake.queue("/api/v1/retrieve_future", result_answer([5, 6]))
        with tinkex.ServiceClient({"experiment": "x"}, "proj-1", display_name="nightly", base_url=fake.base_url,
                                  api_key="tml-fake-tinker-key-42",
                                  default_headers_overrides={"X-Team": "sampling"}) as service:
            client = service.create_sampling_client(base_model=MODEL, record_stability_info=True)
            assert client.sample(PROMPT, 1, PARAMS, topk_sample_logprobs=2).result(30).sequences[0].tokens == [5, 6]
        session = fake.calls("/api/v1/create_session")[0]
        body = json.loads(session.body)
        assert (body["user_metadata"], body["project_id"], body["display_name"]) == ({"experiment": "x"}, "proj-1",
                                                                                    "nightly")
        assert session.headers.get("X-Team") == "sampling"
        sample = json.loads(fake.calls("/api/v1/asample")[0].body)
        assert sample["topk_sample_logprobs"] == 2 and sample["record_stability_info"] is True


def test_the_service_counts_what_all_its_sampling_clients_did(server: LocalServer) -> None:
    with tinkex.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        first = service.create_sampling_client(base_model=MODEL)
        second = tinkex.SamplingClient.create(service, base_model=MODEL).result(60)
        futures = [client.sample(PROMPT, 1, PARAMS) for client in (first, second, second)]
        assert [len(f.result(60).sequences) for f in futures] == [1, 1, 1]
        snapshot = service.get_telemetry().snapshot()
        assert snapshot.completed == 3 and snapshot.submissions >= 3
        assert first.get_telemetry().snapshot().completed == 1
        assert "completed=3" in repr(service.get_telemetry())


def test_the_official_queue_state_hook_logs_a_pause_once(server: LocalServer, caplog: Any) -> None:
    with tinkex.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        client = service.create_sampling_client(base_model=MODEL)
        with caplog.at_level(logging.WARNING, logger="tinkex.queue_state"):
            client.on_queue_state_change(QueueState.ACTIVE, None)
            client.on_queue_state_change(QueueState.PAUSED_CAPACITY, "maintenance")
            client.on_queue_state_change(QueueState.PAUSED_CAPACITY, "maintenance")
        messages: List[str] = [record.getMessage() for record in caplog.records]
        assert messages == [f"Sampling is paused for {client.sampling_session_id}. Reason: maintenance"]


def test_the_client_is_its_own_future_and_the_async_methods_agree(server: LocalServer) -> None:
    with tinkex.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        client = service.create_sampling_client(base_model=MODEL)
        assert client.result() is client
        expected = client.sample(PROMPT, 1, PARAMS).result(60).sequences[0].tokens

        async def main() -> Any:
            awaited_client = await client
            assert awaited_client is client and await client.result_async(5) is client
            return [r.sequences[0].tokens for r in await asyncio.gather(
                client.sample_async(PROMPT, 1, PARAMS), client.sample(PROMPT, 1, PARAMS),
                asyncio.wrap_future(client.sample(PROMPT, 1, PARAMS).future()))]

        assert asyncio.run(main()) == [expected] * 3


def test_a_sampler_handle_builds_a_working_client_that_never_holds_the_key(server: LocalServer) -> None:
    with tinkex.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        client = service.create_sampling_client(base_model=MODEL)
        handle = client.get_sampler_handle()
        assert server.api_key not in handle
        clone = tinkex.SamplingClient.from_sampler_handle(handle, api_key=server.api_key)
        assert clone.sampling_session_id == client.sampling_session_id
        assert clone.sample(PROMPT, 1, PARAMS).result(60).sequences[0].tokens == \
            client.sample(PROMPT, 1, PARAMS).result(60).sequences[0].tokens
        clone.close()


def test_compute_logprobs_last_n_scores_only_the_suffix(server: LocalServer) -> None:
    with tinkex.ServiceClient(base_url=server.base_url, api_key=server.api_key) as service:
        client = service.create_sampling_client(base_model=MODEL)
        full = client.compute_logprobs(PROMPT).result(60)
        last = client.compute_logprobs(PROMPT, 3).result(60)
        assert last[-3:] == full[-3:] and all(value is None for value in last[:-3])
        with pytest.raises(tinkex.ValidationError) as caught:
            client.compute_logprobs(PROMPT, len(PROMPT.to_ints()))
        assert caught.value.field == "prompt_logprobs_last_n"
