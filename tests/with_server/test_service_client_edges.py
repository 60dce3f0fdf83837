"""ServiceClient against a real server: the async capabilities call, and a start-up timeout of one
sampling client that must not stop the start-up another client is still waiting for."""

from __future__ import annotations

import asyncio
import threading

import pytest

import tinkex
from tests.reliability.hostile_server import HostileServer, json_reply
from tests.support.waiting import wait_until
from tinkex import errors, types
from tinkex.server import LocalServer
from tinkex.server.models import ECHO_MODEL

KEY = "tml-service-edges-0000"
CONFIG = "/api/v1/client/config"


def test_get_server_capabilities_async_lists_the_models(local_server: LocalServer) -> None:
    with tinkex.ServiceClient(api_key=KEY, base_url=local_server.base_url) as service:
        capabilities = asyncio.run(service.get_server_capabilities_async())
    assert ECHO_MODEL in [model.model_name for model in capabilities.supported_models]


def test_a_timed_out_client_leaves_the_start_up_another_client_waits_for() -> None:
    released = threading.Event()

    def held_config(handler: object) -> None:
        released.wait(10)
        json_reply({})(handler)  # type: ignore[arg-type]

    with HostileServer() as hostile:
        hostile.on(CONFIG, held_config)
        with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
            waiting = service.create_sampling_client_async(base_model="m")
            wait_until(lambda: len(hostile.calls(CONFIG)) == 1)
            with pytest.raises(errors.APITimeoutError, match="not ready within 0.2 s"):
                service.create_sampling_client(base_model="m", timeout=0.2)
            released.set()
            client = waiting.result(10)  # its start-up went on: it was not abandoned
            assert client.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=3)).result(10)
        assert len(hostile.calls(CONFIG)) == 1
