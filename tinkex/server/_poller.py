"""Completion logs for poller mode (``retrieve_futures``, protocol 4.10).

One log per (sampling session, clone id). Entry ``n`` has cursor ``n``; a poll with
``prev_cursor = c`` acknowledges every entry before ``c`` (they are dropped) and gets the
entries from ``c`` on, plus the new cursor (the number of entries ever logged). A cursor past
the end (a poller that outlived a server restart, or a bad one) acknowledges nothing: the poll
gets every retained entry and the true cursor at once, so no completion is lost to it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, List, Optional, Tuple

if TYPE_CHECKING:
    from .store import RequestRecord

__all__ = ["PollerLog"]


class PollerLog:
    """Finished and failed records of one poller, in completion order. Event loop only.

    Example:
        >>> log = PollerLog()
        >>> log.since(0)
        ([], 0)
    """

    def __init__(self) -> None:
        self._entries: List[RequestRecord] = []
        self._base = 0
        self._waiter: Optional[asyncio.Future[None]] = None

    def append(self, record: RequestRecord) -> None:
        self._entries.append(record)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def end(self) -> int:
        """The cursor after the last entry: the number of entries ever logged."""
        return self._base + len(self._entries)

    def since(self, cursor: int) -> Tuple[List[RequestRecord], int]:
        """Drop entries before ``cursor`` (acknowledged) and return the rest and the new cursor.

        Example:
            >>> log = PollerLog()
            >>> for name in "abc":
            ...     log.append(name)
            >>> log.since(1)
            (['b', 'c'], 3)
            >>> log.since(7)  # past the end: nothing acknowledged, everything retained returned
            (['b', 'c'], 3)
        """
        if self._base < cursor <= self.end:
            drop = min(cursor - self._base, len(self._entries))
            del self._entries[:drop]
            self._base += drop
        return list(self._entries), self.end

    async def wait(self, cursor: int, timeout: float) -> None:
        """Return once an entry at or after ``cursor`` exists (at once for a cursor that is not
        the end), or after ``timeout`` seconds."""
        if self.end != cursor or timeout <= 0:  # news, or a cursor to correct
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.wait((self._waiter,), timeout=timeout)
