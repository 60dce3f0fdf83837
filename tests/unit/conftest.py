"""Unit tests never touch the network: every socket is refused (pytest-socket), so a test that
needs a server cannot hide here; it belongs in ``tests/with_server`` or ``tests/reliability``."""

from __future__ import annotations

from typing import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(autouse=True)
def no_network() -> Iterator[None]:
    disable_socket(allow_unix_socket=True)  # subprocess pipes and asyncio's self-pipe stay usable
    try:
        yield
    finally:
        enable_socket()
