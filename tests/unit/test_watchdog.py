"""The abort handle and the deadline watchdog, with connections whose socket records its shutdown."""

from __future__ import annotations

import socket
import threading
from typing import List

from tests.support.waiting import wait_until
from tinkex._http.watchdog import Abort, DeadlineWatchdog, watch_connection


class RecordingSocket:
    """Stands in for a connection's socket: records shutdowns. Thread-safe: a list append."""

    def __init__(self) -> None:
        self.shutdowns: List[int] = []

    def shutdown(self, how: int) -> None:
        self.shutdowns.append(how)


class Connection:
    def __init__(self) -> None:
        self.sock = RecordingSocket()


def test_on_abort_after_the_abort_runs_the_callback_at_once() -> None:
    handle = Abort()
    handle.abort()
    called: List[str] = []
    handle.on_abort(lambda: called.append("late"))
    assert called == ["late"]


def test_a_second_abort_cuts_and_calls_back_nothing_more() -> None:
    handle = Abort()
    called: List[str] = []
    handle.on_abort(lambda: called.append("once"))
    conn = Connection()
    handle.attach(conn)
    handle.abort()
    handle.abort()
    assert called == ["once"] and conn.sock.shutdowns == [socket.SHUT_RDWR]
    later = Connection()
    handle.attach(later)  # a call made after the abort fails as soon as it connects
    assert later.sock.shutdowns == [socket.SHUT_RDWR]


def test_an_expired_deadline_shuts_its_connection_down() -> None:
    now = [100.0]
    watchdog = DeadlineWatchdog(lambda: now[0])
    conn = Connection()
    try:
        with watchdog.watching(now[0] - 1.0):
            watch_connection(conn)
            wait_until(lambda: bool(conn.sock.shutdowns), timeout=5)
    finally:
        watchdog.close()
    assert conn.sock.shutdowns == [socket.SHUT_RDWR]


def test_a_block_without_connections_arms_nothing() -> None:
    watchdog = DeadlineWatchdog(lambda: 100.0)
    with watchdog.watching(99.0):
        pass
    assert watchdog._thread is None and watchdog._armed == {}
    watchdog.close()


def test_a_closed_watchdog_arms_nothing_and_starts_no_thread() -> None:
    watchdog = DeadlineWatchdog(lambda: 100.0)
    watchdog.close()
    conn = Connection()
    before = threading.active_count()
    watchdog.arm(conn, 50.0)  # long past: an armed connection would be cut at once
    assert watchdog._thread is None and watchdog._armed == {}
    assert threading.active_count() == before and conn.sock.shutdowns == []
