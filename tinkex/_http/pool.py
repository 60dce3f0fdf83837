"""The urllib3 pool under the transport's session: connections it can abort, and direct sends.

``close()`` must be able to stop a call blocked in a read, so the adapter remembers every
connection its pools open and can shut their sockets down. Calls on the hot path skip the
``requests`` layer and go straight to the same pool (half the CPU per call); this module
holds the small pieces that path needs.
"""

from __future__ import annotations

import errno
import weakref
from typing import Any, Mapping, Optional

import attrs
import urllib3
from requests.adapters import HTTPAdapter

from .watchdog import shutdown_connection, watch_connection

__all__ = ["TrackingAdapter", "UrlOnly", "REDIRECTS", "send_request"]

REDIRECTS = frozenset({301, 302, 303, 307, 308})


class TrackingAdapter(HTTPAdapter):
    """An adapter that remembers its sockets, so ``close()`` can abort calls blocked in a read."""

    def __init__(self, **kwargs: Any) -> None:
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.aborted = False
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        # A new dict: urllib3's PoolManager holds its module-level mapping, and patching that one
        # would chain every later transport's pools to this adapter (and to its close()).
        manager = self.poolmanager
        manager.pool_classes_by_scheme = {
            scheme: _tracking_pool(pool_cls, self) for scheme, pool_cls in manager.pool_classes_by_scheme.items()
        }

    def abort_all(self) -> None:
        # Set first: a connection still being opened checks it once connected (see _tracking_pool),
        # so a call that raced past close() cannot block in a read that nothing will abort.
        self.aborted = True
        for conn in list(self.connections):
            shutdown_connection(conn)


def _tracking_pool(pool_cls: Any, adapter: TrackingAdapter) -> Any:
    class TrackingConnection(pool_cls.ConnectionCls):  # type: ignore[misc]  # urllib3 picks the class at run time
        def request(self, *args: Any, **kwargs: Any) -> Any:
            watch_connection(self)  # the running call's deadline now covers this connection
            return super().request(*args, **kwargs)

        def connect(self) -> None:
            super().connect()
            if adapter.aborted:
                shutdown_connection(self)

    class TrackingPool(pool_cls):  # type: ignore[misc]  # a subclass of whichever pool class urllib3 uses
        ConnectionCls = TrackingConnection

        def _new_conn(self) -> Any:
            conn = super()._new_conn()
            adapter.connections.add(conn)
            return conn

        def send(self, method: str, target: str, body: Optional[bytes], headers: Mapping[str, str],
                 timeout: urllib3.Timeout) -> Any:
            """One request on a pooled keep-alive connection: the response, its body still unread.

            ``urlopen`` without the retry, redirect and proxy layers the direct path never uses
            (about a tenth of a call's CPU). Releasing the response returns the connection; a
            failure closes it. Raises what the connection raises (mapped by the caller).
            """
            conn = self._get_conn()  # a keep-alive connection the server dropped is replaced here
            try:
                conn.timeout = timeout.connect_timeout
                self._validate_conn(conn)  # connects (TLS included) as urlopen does
                send_request(conn, method, target, body, headers)
                conn.timeout = timeout.read_timeout
                response = conn.getresponse()
            except BaseException:
                conn.close()
                self._put_conn(None)  # keeps the pool's count of connections right
                raise
            response._connection, response._pool = conn, self  # what urlopen sets: release_conn() returns it
            return response

    return TrackingPool


def send_request(conn: Any, method: str, target: str, body: Optional[bytes], headers: Mapping[str, str]) -> None:
    """Send a request on ``conn``; a send the server cut after answering is left for the read to report."""
    try:
        conn.request(method, target, body=body, headers=headers, preload_content=False, decode_content=True)
    except BrokenPipeError:
        pass  # the server may answer before it read the whole body and close: its answer is still readable
    except OSError as exc:
        if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):  # the same, as macOS reports it
            raise


@attrs.frozen
class UrlOnly:
    """What the adapter reads of a request to pick its connection pool: the URL."""

    url: str
