"""``clear_queue_state_debounce`` against the local server's pause windows: either id clears it (issue 14, item 11)."""

from __future__ import annotations

import logging
from typing import Callable, List

import pytest

import tinkex
from tinkex import types
from tinkex.server import LocalServer
from tinkex.server.model import ECHO_MODEL

PROMPT = types.ModelInput.from_ints(list(b"paused "))
PAUSE = "seed=3,paused_capacity=1s,paused_capacity.reason=GPU maintenance"


def sample_through_a_pause(server: LocalServer, client: tinkex.SamplingClient) -> None:
    server.set_faults(PAUSE)  # a new 1 s window from now: the sample's polls answer try_again
    client.sample(PROMPT, 1, types.SamplingParams(max_tokens=2, seed=0)).result(30)


def pause_warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sampling is paused")]


@pytest.mark.parametrize("which", ["session_id", "sampling_session_id"])
def test_either_id_lets_the_next_pause_warning_through(fresh_server: Callable[..., LocalServer], which: str,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    server = fresh_server(poll_hold_s=0.2)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service, \
            caplog.at_level(logging.WARNING, logger="tinkex"):
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        sample_through_a_pause(server, client)
        sample_through_a_pause(server, client)  # within the minute: debounced
        assert len(pause_warnings(caplog)) == 1
        ids = {"session_id": service.session_id, "sampling_session_id": client.sampling_session_id}
        client.clear_queue_state_debounce(ids[which])
        sample_through_a_pause(server, client)
        expected = f"Sampling is paused for {client.sampling_session_id}. Reason: GPU maintenance"
    assert pause_warnings(caplog) == [expected, expected]
