"""The unit suite's gate: a test here cannot open a network socket."""

from __future__ import annotations

import socket

import pytest
from pytest_socket import SocketBlockedError

# pytest-socket warns before it raises, and this suite turns warnings into errors: either stops the test.
BLOCKED = (SocketBlockedError, UserWarning)


def test_opening_a_network_socket_fails_in_unit_tests() -> None:
    with pytest.raises(BLOCKED):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)


def test_a_real_transport_cannot_reach_a_server_from_unit_tests() -> None:
    from tinkex._config import Config
    from tinkex._http import Transport
    from tinkex.errors import APIConnectionError

    transport = Transport(Config.from_env(api_key="tml-unit", base_url="http://127.0.0.1:9"))
    try:
        with pytest.raises((APIConnectionError, *BLOCKED)):
            transport.request("GET", "healthz", max_retries=0)
    finally:
        transport.close()
