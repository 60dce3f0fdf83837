"""Stopping while the client waits: close(), Ctrl-C, a start-up timeout and interpreter exit.

Start-up retries (issue 16 item 5, issue 14 items 1 and 4): ``client/config`` answering 503, a
stalled ``client/config`` and ``Retry-After: 60`` each hold the handshake in a retry wait or a
blocked read; ``close()`` (also by leaving ``with``), Ctrl-C and ``create_sampling_client(timeout=)``
must end it within a second. A transient ``client/dynamic_config`` failure must not abort the
start-up (item 7). Exiting without ``close()`` finishes the session on the server (item 8).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Dict, Iterator

import pytest

import tinkex
from tests.reliability.hostile_server import (
    HostileServer,
    drop,
    json_reply,
    reply,
    stall,
    then,
    unused_port,
)
from tinkex import errors, types
from tinkex.server import LocalServer

KEY = "tml-shutdown-0000"
CONFIG, DYNAMIC = "/api/v1/client/config", "/api/v1/client/dynamic_config"
PROMPT_S = 1.0  # "within a second"
SLACK_S = 0.5  # thread scheduling on a shared 2-core machine

START_UP_FAULTS: Dict[str, Callable[[], Any]] = {
    "503": lambda: json_reply({"detail": "busy"}, 503),
    "stalled": stall,
    "retry-after-60": lambda: reply(503, b"{}", headers=(("Retry-After", "60"),)),
}


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer() as server:
        yield server


#: Threads of a LocalServer, which a session-scoped fixture of another suite may keep running
#: (the clients under test here never start them).
SERVER_THREADS = ("tinkex-local-server", "tinkex-generate")


def tinkex_threads() -> list:
    """The client threads still alive (a LocalServer's own threads are not the client's)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("tinkex") and not t.name.startswith(
        SERVER_THREADS)]


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("fault", sorted(START_UP_FAULTS))
def test_close_during_start_up_retries_returns_within_a_second(hostile: HostileServer, fault: str) -> None:
    hostile.on(CONFIG, START_UP_FAULTS[fault]())
    service = tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url)
    outcome: Dict[str, Any] = {}

    def create() -> None:
        try:
            service.create_sampling_client(base_model="m")
        except BaseException as exc:  # the test inspects it
            outcome["error"], outcome["at"] = exc, time.monotonic()

    creator = threading.Thread(target=create)
    creator.start()
    assert wait_until(lambda: len(hostile.calls(CONFIG)) >= 1, 5.0)
    time.sleep(0.3)  # inside the retry wait (503s) or the blocked read (stalled)
    started = time.monotonic()
    service.close()
    closed_in = time.monotonic() - started
    creator.join(PROMPT_S + SLACK_S)
    assert closed_in < PROMPT_S, f"close() took {closed_in:.2f}s"
    assert not creator.is_alive(), "create_sampling_client still waiting after close()"
    assert isinstance(outcome["error"], errors.ClientClosedError), repr(outcome["error"])
    assert outcome["at"] - started < PROMPT_S + SLACK_S
    assert wait_until(lambda: not tinkex_threads(), PROMPT_S), tinkex_threads()


@pytest.mark.parametrize("fault", sorted(START_UP_FAULTS))
def test_a_start_up_timeout_raises_api_timeout_error_and_stops_the_start_up(hostile: HostileServer,
                                                                            fault: str) -> None:
    """Issue 14 item 4: not the builtin TimeoutError, and nothing keeps retrying in the background."""
    hostile.on(CONFIG, START_UP_FAULTS[fault]())
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
        started = time.monotonic()
        with pytest.raises(errors.APITimeoutError) as caught:
            service.create_sampling_client(base_model="m", timeout=0.5)
        assert time.monotonic() - started < 0.5 + SLACK_S
        assert caught.value.url == service.config.base_url
        assert wait_until(lambda: not tinkex_threads(), PROMPT_S), tinkex_threads()
        sent = len(hostile.calls(CONFIG))
        time.sleep(1.6)  # past the next retry delays: 0.5 s, then 1 s
        assert len(hostile.calls(CONFIG)) == sent, "the abandoned start-up kept retrying"
        leaving = time.monotonic()
    assert time.monotonic() - leaving < PROMPT_S


def test_start_up_can_be_tried_again_after_a_timeout(hostile: HostileServer) -> None:
    hostile.on(CONFIG, then(stall(), 1, json_reply({})))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
        with pytest.raises(errors.APITimeoutError):
            service.create_sampling_client(base_model="m", timeout=0.5)
        client = service.create_sampling_client(base_model="m", timeout=10)
        assert client.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=3)).result(10)


@pytest.mark.parametrize("failure", ["500", "503", "429", "dropped connection"])
def test_one_transient_dynamic_config_failure_does_not_abort_start_up(hostile: HostileServer, failure: str) -> None:
    """Issue 16 item 7: the initial fetch is inside the generic holder retry (protocol.md 4.2, 7.1)."""
    first = drop() if failure == "dropped connection" else json_reply({"detail": "flaky"}, int(failure))
    hostile.on(DYNAMIC, then(first, 1, json_reply({"sample_cancel_enabled": True})))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url, max_retries=0) as service:
        client = service.create_sampling_client(base_model="m", timeout=10)
        assert client.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=3)).result(10)
    assert len(hostile.calls(DYNAMIC)) == 2


def test_dynamic_config_404_means_defaults_and_other_4xx_abort(hostile: HostileServer) -> None:
    hostile.on(DYNAMIC, json_reply({"detail": "no such route"}, 404))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service:
        service.create_sampling_client(base_model="m", timeout=10)
    assert len(hostile.calls(DYNAMIC)) == 1
    hostile.on(DYNAMIC, json_reply({"detail": "forbidden"}, 403))
    with tinkex.ServiceClient(api_key=KEY, base_url=hostile.base_url) as service, \
            pytest.raises(errors.PermissionDeniedError):
        service.create_sampling_client(base_model="m", timeout=10)


# -- Ctrl-C against an unreachable server (issue 14 item 1) ---------------------------------------

PYTHON_WAIT = textwrap.dedent("""
    import sys, tinkex
    print("waiting", flush=True)
    with tinkex.ServiceClient(api_key="tml-x", base_url=sys.argv[1], max_retries=10) as service:
        service.create_sampling_client(base_model="m")
""")


def interrupt_after(command: list, seconds: float) -> tuple:
    env = dict(os.environ, TINKER_API_KEY="tml-x", TINKER_BASE_URL=f"http://127.0.0.1:{unused_port()}")
    command = [env["TINKER_BASE_URL"] if part == "-" else part for part in command]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds)
    assert process.poll() is None, "exited before the interrupt"
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _out, err = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, err


def test_ctrl_c_ends_the_cli_within_a_second() -> None:
    tinkex_cli = os.path.join(os.path.dirname(sys.executable), "tinkex")
    code, elapsed, err = interrupt_after([tinkex_cli, "sample", "hi", "--model", "m", "--max-retries", "10"], 3.0)
    assert code == 130, err[-2000:]
    assert elapsed < PROMPT_S + SLACK_S, f"exited {elapsed:.2f}s after SIGINT"


def test_ctrl_c_ends_a_python_start_up_within_a_second() -> None:
    code, elapsed, err = interrupt_after([sys.executable, "-c", PYTHON_WAIT, "-"], 3.0)
    assert code in (-signal.SIGINT, 1, 130), (code, err[-2000:])
    assert "KeyboardInterrupt" in err
    assert elapsed < PROMPT_S + SLACK_S, f"exited {elapsed:.2f}s after SIGINT"


# -- exiting without close() (issue 16 item 8) ----------------------------------------------------

FORGET = textwrap.dedent("""
    import sys, tinkex
    from tinkex import types
    service = tinkex.ServiceClient(api_key="tml-exit-key", base_url=sys.argv[1])
    client = service.create_sampling_client(base_model="tinkex/echo")
    futures = [client.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=40))
               for _ in range(40)]
    futures[0].result(30)
    print("leaving", flush=True)
""")


@pytest.mark.parametrize("cancel_enabled", [False, True], ids=["finish", "finish+cancel_future"])
def test_exit_without_close_finishes_the_session_and_its_work(cancel_enabled: bool) -> None:
    with LocalServer(models=["tinkex/echo"], token_delay_ms=25, max_concurrent_generations=2, poll_hold_s=0.5,
                     dynamic_config={"sample_cancel_enabled": cancel_enabled}) as server:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", FORGET, server.base_url], capture_output=True, text=True,
                              timeout=60)
        exited_in = time.monotonic() - started
        assert done.returncode == 0 and "leaving" in done.stdout, done.stderr[-2000:]
        stats = server.stats()
    assert stats["sessions_finished"] == 1, stats
    # About 1 s of two concurrent 1 s generations ran before the exit; the rest were dropped.
    assert stats["events"].get("cancels_by_session_end", 0) + stats["cancels"] >= 30, stats
    if cancel_enabled:
        assert stats["requests"].get("cancel_future", 0) > 0, stats["requests"]
    assert exited_in < 20.0, f"exit took {exited_in:.1f}s"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
