"""Stalled and unreachable servers: every call fails within its deadline with a typed error
naming the URL, and nothing holds up interpreter exit.

Peers: a listener that never accepts (the kernel completes the connection, nobody answers),
a server that reads the request and never answers, one that answers one byte per second, and
a port nobody listens on.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from typing import Iterator

import pytest

import tinkex
from tests.reliability.hostile_server import (
    HostileServer,
    SilentListener,
    result_body,
    stall,
    trickle,
    unused_port,
)
from tinkex import errors, types
from tinkex._config import Config
from tinkex._http.transport import Transport

KEY = "tml-stalled-0000"
SLACK_S = 2.0
PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=3, seed=1)
ASAMPLE, RETRIEVE = "/api/v1/asample", "/api/v1/retrieve_future"


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


def assert_names_url(error: BaseException, base_url: str) -> None:
    assert isinstance(error, errors.APIConnectionError), repr(error)
    assert error.url is not None and error.url.startswith(base_url), error.url
    assert base_url in str(error), str(error)


def timed_sample(base_url: str, deadline: float, **service: object) -> tuple:
    with tinkex.ServiceClient(api_key=KEY, base_url=base_url, **service) as client:  # type: ignore[arg-type]
        sampler = client.create_sampling_client(base_model="m")
        started = time.monotonic()
        error = sampler.sample(PROMPT, 1, PARAMS, timeout=deadline).exception(deadline + 10)
        return error, time.monotonic() - started


def test_handshake_with_a_listener_that_never_answers_times_out() -> None:
    with SilentListener() as silent:
        service = tinkex.ServiceClient(api_key=KEY, base_url=silent.base_url, timeout=1.0, max_retries=0)
        started = time.monotonic()
        with pytest.raises(errors.APITimeoutError) as caught:
            service.create_sampling_client(base_model="m")
        assert time.monotonic() - started < 1.0 + SLACK_S
        assert_names_url(caught.value, silent.base_url)
        service.close()


def test_unreachable_server_fails_fast_with_a_connection_error() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}"
    service = tinkex.ServiceClient(api_key=KEY, base_url=base_url, max_retries=2)
    started = time.monotonic()
    with pytest.raises(errors.APIConnectionError) as caught:
        service.create_sampling_client(base_model="m")
    assert not isinstance(caught.value, errors.APITimeoutError)
    assert time.monotonic() - started < 0.5 + 1.0 + SLACK_S  # two HTTP-layer retries: 0.5 s and 1 s at most
    assert_names_url(caught.value, base_url)
    service.close()


@pytest.mark.parametrize("path", [ASAMPLE, RETRIEVE])
def test_a_stalled_sampling_route_fails_by_the_deadline(hostile: HostileServer, path: str) -> None:
    hostile.on(path, stall())
    error, elapsed = timed_sample(hostile.base_url, 1.5)
    assert isinstance(error, errors.APITimeoutError), repr(error)
    assert elapsed < 1.5 + SLACK_S
    assert_names_url(error, hostile.base_url)


@pytest.mark.parametrize("path,whole", [(ASAMPLE, True), (ASAMPLE, False), (RETRIEVE, True), (RETRIEVE, False)])
def test_one_byte_per_second_fails_by_the_deadline(hostile: HostileServer, path: str, whole: bool) -> None:
    """A trickle resets every socket read timeout; only the call's deadline can stop it."""
    answer = b'{"request_id":"req-1","sample_sequence_ids":["req-1:seq:0"]}'
    if whole:
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
            len(answer), answer)
    if path == RETRIEVE and whole:
        body = result_body()
        answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body), body)
    hostile.on(path, trickle(answer, 0.5, whole_response=whole))
    error, elapsed = timed_sample(hostile.base_url, 1.5, timeout=1.0)
    assert isinstance(error, errors.APITimeoutError), repr(error)
    assert elapsed < 1.5 + SLACK_S
    assert_names_url(error, hostile.base_url)


def test_the_socket_read_timeout_bounds_a_call_without_a_deadline(hostile: HostileServer) -> None:
    """No ``timeout=``: the per-read timeout (``ServiceClient(timeout=)``) still ends each HTTP call."""
    hostile.on("/api/v1/create_sampling_session", stall())
    service = tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url, timeout=1.0, max_retries=1)
    started = time.monotonic()
    with pytest.raises(errors.APITimeoutError) as caught:
        service.create_sampling_client(base_model="m")
    assert time.monotonic() - started < 2 * 1.0 + 0.5 + SLACK_S
    assert_names_url(caught.value, hostile.base_url)
    service.close()


EXIT_SCRIPT = textwrap.dedent("""
    import sys, tinkex
    from tinkex import types
    service = tinkex.ServiceClient(api_key="tml-exit-test", base_url=sys.argv[1])
    client = service.create_sampling_client(base_model="m")
    futures = [client.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2))
               for _ in range(8)]
    if sys.argv[2] == "close":
        service.close()
    print("leaving", flush=True)
""")


@pytest.mark.parametrize("ending", ["close", "forget"])
@pytest.mark.parametrize("path", [ASAMPLE, RETRIEVE])
def test_interpreter_exit_is_prompt_with_calls_stalled(hostile: HostileServer, path: str, ending: str) -> None:
    hostile.on(path, stall())
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, hostile.base_url, ending], capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaving" in done.stdout
    assert elapsed < 10.0, f"the interpreter took {elapsed:.1f}s to exit"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]


def test_closing_one_client_leaves_the_calls_of_another_alone(hostile: HostileServer) -> None:
    """Each transport aborts only its own sockets on close() (urllib3's pool-class mapping is
    module-global: patching it in place once chained every later transport to the first)."""
    hostile.on("/api/v1/slow", stall())
    config = Config.from_env(api_key=KEY, base_url=hostile.base_url, timeout=1.0)
    first, second = Transport(config), Transport(config)
    outcome: list = []

    def call() -> None:
        try:
            second.request("POST", "slow", body={}, max_retries=0)
        except errors.TinkexError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    first.close()
    worker.join(10)
    second.close()
    assert len(outcome) == 1 and isinstance(outcome[0], errors.APITimeoutError), outcome
