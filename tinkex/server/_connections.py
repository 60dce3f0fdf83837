"""Connection hygiene against hostile clients: a per-peer connection cap and head/idle timeouts.

aiohttp reads a request head for as long as the client cares to trickle it, and keeps an idle
keep-alive connection open for an hour; a client opening a thousand connections that each send
half a header holds the server at its descriptor limit. :class:`ConnectionGuard` wraps
aiohttp's protocol factory so that every connection

* is refused at once with a ``429`` (and closed) when its peer address already holds
  ``max_per_peer`` connections;
* is aborted when it has sent part of a request head and not completed it within
  ``head_timeout_s`` (counted from its first byte after connecting or after its last answer);
* is closed when it sends nothing for ``idle_timeout_s`` between requests.

A connection counts as busy (no timers) from the moment the middleware sees its request until
its handler returns; request *bodies* are bounded separately where handlers read them. Bytes of
a pipelined request that arrive while the connection is busy start no head timer: such a
connection falls under the idle timeout instead.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, Callable, Dict, Optional

from aiohttp import web

from .._wire.codec import dumps
from ._stats import Stats

__all__ = ["ConnectionGuard", "GuardedSite"]

logger = logging.getLogger(__name__)


def _refusal(max_per_peer: int) -> bytes:
    body = dumps({"detail": f"too many connections from this address (limit {max_per_peer})"})
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _Guarded(asyncio.Protocol):
    """One connection: forwards to aiohttp's protocol unless refused, and runs the timers."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: Optional[asyncio.Transport] = None
        self._peer: Optional[str] = None
        self._refused = False
        self._lost = False
        self._busy = 0
        self._head_started: Optional[float] = None
        self._idle_since = 0.0
        self._timer: Optional[asyncio.TimerHandle] = None

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._guard.admit(self._peer):
            self._refused = True
            transport.write(_refusal(self._guard.max_per_peer))
            transport.close()
            return
        self._guard.opened(transport, self)
        self._waiting()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._busy and self._head_started is None:
            self._head_started = self._guard.loop.time()
            self._arm(self._guard.head_timeout_s)
        self._inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._lost = True
        self._cancel_timer()
        if self._refused:
            return
        assert self._transport is not None and self._peer is not None
        self._guard.closed(self._transport, self._peer)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    # request lifecycle (from the middleware) ------------------------------------------------

    def request_started(self) -> None:
        self._busy += 1
        self._head_started = None
        self._cancel_timer()

    def request_finished(self) -> None:
        self._busy = max(0, self._busy - 1)
        if not self._busy:
            self._waiting()

    # timers -------------------------------------------------------------------------------

    def _waiting(self) -> None:
        self._idle_since = self._guard.loop.time()
        self._head_started = None
        self._arm(self._guard.idle_timeout_s)

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        if self._lost:  # a handler finishing after its connection dropped: nothing to time
            return
        self._timer = self._guard.loop.call_later(delay, self._expired)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self._transport
        if self._busy or transport is None or transport.is_closing():
            return
        if self._head_started is not None:
            self._guard.stats.count("connections_head_timeout")
            logger.info("closing a connection from %s: request head incomplete after %.1f s",
                        self._peer, self._guard.head_timeout_s)  # fmt: skip
            transport.abort()
        else:
            self._guard.stats.count("connections_idle_closed")
            transport.close()


class ConnectionGuard:
    """Wraps an aiohttp protocol factory with the per-peer cap and the timers. Event loop only.

    ``bind`` gives it aiohttp's protocol factory (``AppRunner.server``) once the runner is set
    up; the guard is then the factory handed to ``create_server``.

    Args:
        loop: the server's event loop.
        stats: where refusals and timeouts are counted.
        max_per_peer: open connections allowed per peer address.
        head_timeout_s: time to complete a request head once its first byte arrived.
        idle_timeout_s: time a connection may sit without sending anything between requests.

    Example:
        >>> guard = ConnectionGuard(loop=None, stats=Stats(), max_per_peer=2, head_timeout_s=10, idle_timeout_s=75)
        >>> guard.admit("127.0.0.1"), guard.admit("127.0.0.1"), guard.admit("127.0.0.1")
        (True, True, False)
    """

    def __init__(
        self,
        *,
        loop: Any,
        stats: Stats,
        max_per_peer: int,
        head_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self._factory: Optional[Callable[[], asyncio.Protocol]] = None
        self.loop = loop
        self.stats = stats
        self.max_per_peer = max_per_peer
        self.head_timeout_s = head_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._per_peer: Dict[str, int] = collections.Counter()
        self._by_transport: Dict[Any, _Guarded] = {}

    def bind(self, factory: Callable[[], asyncio.Protocol]) -> ConnectionGuard:
        self._factory = factory
        return self

    def __call__(self) -> asyncio.Protocol:
        assert self._factory is not None, "bind() the guard to aiohttp's protocol factory first"
        return _Guarded(self, self._factory())

    def admit(self, peer: str) -> bool:
        if self._per_peer[peer] >= self.max_per_peer:
            self.stats.count("connections_refused")
            logger.warning("refusing a connection from %s: %d already open", peer, self._per_peer[peer])
            return False
        self._per_peer[peer] += 1
        return True

    def opened(self, transport: asyncio.Transport, guarded: _Guarded) -> None:
        self._by_transport[transport] = guarded

    def closed(self, transport: asyncio.Transport, peer: str) -> None:
        self._by_transport.pop(transport, None)
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    def connection(self, transport: Any) -> Optional[_Guarded]:
        """The guarded connection a request arrived on (None if it is already gone)."""
        return self._by_transport.get(transport)

    @property
    def open_connections(self) -> int:
        return sum(self._per_peer.values())


class GuardedSite(web.TCPSite):
    """A ``TCPSite`` whose listening socket hands connections to a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, backlog: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port, reuse_address=True, backlog=backlog)
        self._guard_host, self._guard_port, self._guard_backlog = host, port, backlog
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        factory = self._runner.server
        assert factory is not None
        self.guard.bind(factory)
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, self._guard_host, self._guard_port, backlog=self._guard_backlog, reuse_address=True
        )
