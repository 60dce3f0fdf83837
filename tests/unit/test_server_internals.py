"""The local server's building blocks that need no socket: API-key and JWT checks, the daemon
worker pool, poller completion logs, the per-connection guard (driven through a hand-made
transport and a manual loop clock), and ``tinkex serve``'s signal pipe and descriptor limit."""

from __future__ import annotations

import asyncio
import importlib
import os
import resource
import signal
import threading
from concurrent.futures import CancelledError, Future
from typing import Any, Callable, List, Optional, Tuple

import pytest

from tinkex.server import _auth
from tinkex.server._auth import INVALID_TOKEN, Authenticator, fingerprint
from tinkex.server._connections import ConnectionGuard
from tinkex.server._poller import PollerLog
from tinkex.server._problems import Problem
from tinkex.server._settings import ServerSettings
from tinkex.server._stats import Stats
from tinkex.server._workers import DaemonExecutor
from tinkex.server.cli import _raise_descriptor_limit, _StopSignals, main

# ---------------------------------------------------------------- API keys and JWTs


def refused(auth: Authenticator, key: Optional[str]) -> Problem:
    with pytest.raises(Problem) as info:
        auth.principal(key)
    assert info.value.status == 401
    return info.value


def test_a_jwt_with_the_wrong_number_of_parts_is_malformed() -> None:
    problem = refused(Authenticator(ServerSettings()), "eyJhbGciOi.only-two")
    assert problem.detail == "malformed JWT" and problem.headers == {"WWW-Authenticate": INVALID_TOKEN}


def test_a_jwt_with_non_ascii_text_is_malformed_not_a_crash() -> None:
    problem = refused(Authenticator(ServerSettings()), "eyJé.payload.signature")
    assert problem.detail == "malformed JWT"


@pytest.mark.parametrize("payload", [b"not json", b'{"exp": 1}', b'{"sub": "key-x", "exp": "later"}', b"[1, 2]"])
def test_a_correctly_signed_jwt_with_bad_claims_is_malformed(payload: bytes) -> None:
    auth = Authenticator(ServerSettings())
    header, body = _auth._HEADER, _auth._b64(payload)
    problem = refused(auth, f"{header}.{body}.{auth._sign(header, body)}")
    assert problem.detail == "malformed JWT" and problem.headers == {"WWW-Authenticate": INVALID_TOKEN}


def test_a_jwt_is_accepted_until_it_expires() -> None:
    now = [1_000_000.0]
    auth = Authenticator(ServerSettings(jwt_ttl_s=60), clock=lambda: now[0])
    token = auth.issue_jwt(fingerprint("tml-user"))
    assert auth.principal(token) == fingerprint("tml-user")
    now[0] += 59
    assert auth.principal(token) == fingerprint("tml-user")
    now[0] += 1
    assert refused(auth, token).detail == "JWT expired"
    other_server = Authenticator(ServerSettings(jwt_ttl_s=60), clock=lambda: 1_000_000.0)
    assert refused(other_server, token).detail == "JWT not issued by this server"


def test_the_key_cache_is_bounded_and_keys_still_check_after_it_is_reset() -> None:
    auth = Authenticator(ServerSettings())
    keys = [f"tml-key-{index}" for index in range(_auth._CACHE_LIMIT + 1)]
    for key in keys:
        assert auth.principal(key) == fingerprint(key)
    assert len(auth._cache) == 1  # full at the limit: emptied, then the last key cached
    assert auth.principal(keys[0]) == fingerprint(keys[0])
    assert refused(auth, "sk-not-a-tinker-key").detail.startswith("invalid API key")


# ---------------------------------------------------------------- the worker pool


def blocked_pool() -> Tuple[DaemonExecutor, threading.Event, Future[str]]:
    """A one-worker pool whose worker is busy until the returned event is set."""
    pool = DaemonExecutor(1, name="test-pool")
    release, started = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        return "held"

    first = pool.submit(hold)
    assert started.wait(10)
    return pool, release, first


def test_a_shut_down_pool_refuses_work_and_shutting_down_again_is_harmless() -> None:
    pool = DaemonExecutor(2, name="test-pool")
    assert pool.submit(pow, 2, 5).result(10) == 32
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut-down"):
        pool.submit(pow, 2, 5)
    pool.shutdown()
    pool.shutdown(wait=False)


def test_shutdown_with_cancel_futures_cancels_only_queued_work() -> None:
    pool, release, first = blocked_pool()
    ran: List[int] = []
    queued = [pool.submit(ran.append, index) for index in range(3)]
    pool.shutdown(wait=False, cancel_futures=True)  # returns without joining the busy worker
    assert all(future.cancelled() for future in queued)
    release.set()
    assert first.result(10) == "held"
    pool.shutdown()
    assert ran == []


def test_shutdown_without_cancel_futures_finishes_queued_work() -> None:
    pool, release, first = blocked_pool()
    second = pool.submit(lambda: "second")
    pool.shutdown(wait=False)
    release.set()
    pool.shutdown()
    assert (first.result(0), second.result(0)) == ("held", "second")


def test_work_cancelled_while_queued_never_runs_and_errors_reach_the_future() -> None:
    pool, release, _first = blocked_pool()
    ran: List[str] = []
    skipped = pool.submit(ran.append, "skipped")
    assert skipped.cancel()
    failing = pool.submit(int, "not a number")
    after = pool.submit(ran.append, "after")
    release.set()
    after.result(10)
    with pytest.raises(ValueError):
        failing.result(0)
    with pytest.raises(CancelledError):
        skipped.result(0)
    assert ran == ["after"]
    pool.shutdown()


# ---------------------------------------------------------------- poller logs


def test_two_polls_waiting_on_one_log_both_wake_on_a_completion() -> None:
    async def scenario() -> Tuple[List[Any], int]:
        log = PollerLog()
        first = asyncio.ensure_future(log.wait(0, 10.0))
        second = asyncio.ensure_future(log.wait(0, 10.0))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        log.append("record")  # type: ignore[arg-type]
        await asyncio.wait_for(asyncio.gather(first, second), 5)
        return log.since(0)

    assert asyncio.run(scenario()) == (["record"], 1)


def test_a_poll_with_a_stale_cursor_or_no_time_returns_at_once() -> None:
    async def scenario() -> None:
        log = PollerLog()
        log.append("a")  # type: ignore[arg-type]
        await asyncio.wait_for(log.wait(0, 10.0), 1)  # there is news after cursor 0
        await asyncio.wait_for(log.wait(1, 0.0), 1)  # no time to wait

    asyncio.run(scenario())


# ---------------------------------------------------------------- the connection guard


class ManualLoop:
    """What the guard needs of a loop: ``time`` and ``call_later``, with time moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: List[Tuple[float, Callable[[], None], Timer]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer()
        self.timers.append((self.now + delay, callback, timer))
        return timer

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [entry for entry in self.timers if entry[0] <= self.now and not entry[2].cancelled]
        self.timers = [entry for entry in self.timers if entry not in due]
        for _, callback, _timer in due:
            callback()


class Timer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Transport(asyncio.Transport):
    def __init__(self, peer: Any = ("127.0.0.1", 5000)) -> None:
        super().__init__()
        self.peer = peer
        self.written = b""
        self.closed = self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


class Inner(asyncio.Protocol):
    """aiohttp's side of a connection: records what reaches it."""

    def __init__(self) -> None:
        self.calls: List[str] = []

    def connection_made(self, transport: Any) -> None:
        self.calls.append("made")

    def data_received(self, data: bytes) -> None:
        self.calls.append(f"data {data!r}")

    def eof_received(self) -> Optional[bool]:
        self.calls.append("eof")
        return None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.calls.append("lost")

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


def guard_of(max_per_peer: int = 1) -> Tuple[ConnectionGuard, ManualLoop, List[Inner]]:
    loop, inners = ManualLoop(), []

    def factory() -> Inner:
        inners.append(Inner())
        return inners[-1]

    guard = ConnectionGuard(loop=loop, stats=Stats(), max_per_peer=max_per_peer, head_timeout_s=2, idle_timeout_s=10)
    return guard.bind(factory), loop, inners


def test_a_refused_connection_forwards_nothing_to_aiohttp() -> None:
    guard, _loop, inners = guard_of(max_per_peer=1)
    kept, kept_transport = guard(), Transport()
    kept.connection_made(kept_transport)
    refused_connection, transport = guard(), Transport()
    refused_connection.connection_made(transport)
    assert transport.written.startswith(b"HTTP/1.1 429 ") and transport.closed
    for event in (lambda: refused_connection.data_received(b"GET / HTTP/1.1\r\n"), refused_connection.eof_received,
                  refused_connection.pause_writing, refused_connection.resume_writing,
                  lambda: refused_connection.connection_lost(None)):
        event()
    assert inners[1].calls == []
    assert guard.open_connections == 1 and guard.stats.events["connections_refused"] == 1
    kept.pause_writing()
    kept.resume_writing()
    kept.connection_lost(None)
    assert inners[0].calls == ["made", "pause", "resume", "lost"]
    assert guard.open_connections == 0


def test_a_connection_busy_with_two_requests_is_not_timed_until_both_finish() -> None:
    guard, loop, _inners = guard_of()
    connection, transport = guard(), Transport()
    connection.connection_made(transport)
    connection.data_received(b"POST /a HTTP/1.1\r\n")
    connected = guard.connection(transport)
    assert connected is connection
    connection.request_started()
    connection.request_started()  # a pipelined request
    connection.request_finished()
    loop.advance(60)
    assert not transport.is_closing()  # still busy with the second request
    connection.request_finished()
    loop.advance(9)
    assert not transport.is_closing()
    loop.advance(1)
    assert transport.closed and not transport.aborted  # idle: a polite close
    assert guard.stats.events["connections_idle_closed"] == 1


def test_a_timer_firing_on_a_connection_already_closing_counts_nothing() -> None:
    guard, loop, _inners = guard_of()
    connection, transport = guard(), Transport()
    connection.connection_made(transport)
    connection.data_received(b"GET / HT")  # head timer armed
    transport.close()  # aiohttp closes it; connection_lost has not arrived yet
    loop.advance(2)
    assert not transport.aborted
    assert guard.stats.events["connections_head_timeout"] == 0
    assert guard.stats.events["connections_idle_closed"] == 0


# ---------------------------------------------------------------- tinkex serve's signals and limits


def test_installing_a_signal_twice_keeps_the_original_handler_for_release() -> None:
    original = signal.getsignal(signal.SIGUSR1)
    signals = _StopSignals()
    signals.install(signal.SIGUSR1)
    signals.install(signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    signals.wait()  # the signal became a byte in the pipe
    signals.release()
    assert signal.getsignal(signal.SIGUSR1) == original


def test_install_off_the_main_thread_does_nothing() -> None:
    original = signal.getsignal(signal.SIGUSR2)
    signals = _StopSignals()
    thread = threading.Thread(target=signals.install, args=(signal.SIGUSR2,))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGUSR2) == original
    signals.release()


def test_a_signal_storm_that_fills_the_pipe_is_absorbed() -> None:
    signals = _StopSignals()
    try:
        while True:
            os.write(signals._write_fd, b"\0" * 65536)
    except BlockingIOError:
        pass
    signals._on_signal(signal.SIGTERM, None)  # the pipe is full: nothing raised, one byte is enough
    signals.wait()
    signals.release()


def test_release_while_stopping_ignores_late_default_signals() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signals = _StopSignals()
    signals.install(signal.SIGUSR1)
    signals.release(stopping=True)
    try:
        assert signal.getsignal(signal.SIGUSR1) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


@pytest.fixture
def descriptor_limit() -> Any:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    restore = resource.setrlimit  # the real one, even when a test replaced it
    yield soft, hard
    restore(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_descriptor_limit_is_raised_towards_the_hard_limit(descriptor_limit: Tuple[int, int]) -> None:
    soft, hard = descriptor_limit
    lowered = min(soft, 4096) - 100
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    _raise_descriptor_limit(wanted=lowered + 50)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered + 50, hard)
    _raise_descriptor_limit(wanted=lowered)  # already above: never lowered
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (lowered + 50, hard)


def test_a_refused_limit_change_is_ignored(descriptor_limit: Tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    soft, hard = descriptor_limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096) - 100, hard))

    def not_allowed(_which: int, _limits: Tuple[int, int]) -> None:
        raise PermissionError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", not_allowed)
    _raise_descriptor_limit(wanted=min(soft, 4096))
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (min(soft, 4096) - 100, hard)


def test_importing_the_server_main_module_does_not_serve() -> None:
    module = importlib.import_module("tinkex.server.__main__")
    assert module.main is main
