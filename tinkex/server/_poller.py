"""Completion logs for poller mode (``retrieve_futures``, protocol 4.10).

One log per (sampling session, clone id). Entry ``n`` has cursor ``n``; a poll with
``prev_cursor = c`` acknowledges every entry before ``c`` (they are dropped) and gets the
entries from ``c`` on, plus the new cursor (the number of entries ever logged).
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional, Tuple

__all__ = ["PollerLog"]


class PollerLog:
    """Finished and failed records of one poller, in completion order. Event loop only.

    Example:
        >>> log = PollerLog()
        >>> log.since(0)
        ([], 0)
    """

    def __init__(self) -> None:
        self._entries: List[Any] = []
        self._base = 0
        self._waiter: Optional[asyncio.Future] = None

    def append(self, record: Any) -> None:
        self._entries.append(record)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def since(self, cursor: int) -> Tuple[List[Any], int]:
        """Drop entries before ``cursor`` (acknowledged) and return the rest and the new cursor."""
        if cursor > self._base:
            drop = min(cursor - self._base, len(self._entries))
            del self._entries[:drop]
            self._base += drop
        end = self._base + len(self._entries)
        return list(self._entries), end

    async def wait(self, cursor: int, timeout: float) -> None:
        """Return once an entry at or after ``cursor`` exists, or after ``timeout`` seconds."""
        if self._base + len(self._entries) > cursor or timeout <= 0:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait((self._waiter,), timeout=timeout)
