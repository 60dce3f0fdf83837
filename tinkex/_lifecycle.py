"""Interpreter-exit safety: every live client is closed before the thread pools are joined.

``concurrent.futures`` joins its worker threads at exit, and a worker blocked in a long
poll would hold the interpreter until the poll returns. tinkex registers an exit hook that
runs first (hooks run last-registered first) and closes every live client, which aborts
blocked reads so the workers unwind at once.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (registers its exit hook before ours)
import logging
import threading
import weakref
from typing import Any

logger = logging.getLogger(__name__)

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()  # guards _live against concurrent register/close_all


def register(client: Any) -> None:
    with _lock:
        _live.add(client)


def unregister(client: Any) -> None:
    with _lock:
        _live.discard(client)


def close_all() -> None:
    """Close every live client; errors are logged, never raised (this runs at exit)."""
    with _lock:
        clients = list(_live)
    for client in clients:
        try:
            client.close()
        except Exception:
            logger.debug("closing %r at exit failed", client, exc_info=True)


def _install_exit_hook() -> None:
    register_hook = getattr(threading, "_register_atexit", None)
    if register_hook is not None:
        register_hook(close_all)
    else:  # pragma: no cover - very old interpreters
        import atexit

        atexit.register(close_all)


_install_exit_hook()
