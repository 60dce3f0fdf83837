"""Counters behind ``GET /api/v1/admin/stats``: what the server saw, did and injected."""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict

__all__ = ["Stats"]


class Stats:
    """Plain counters. Not thread-safe: updated and read only on the server's event loop.

    Example:
        >>> stats = Stats()
        >>> stats.count_request("asample")
        >>> stats.snapshot()["requests"]
        {'asample': 1}
    """

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.faults_by_route: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def count_request(self, route: str) -> None:
        self.requests[route] += 1

    def count_status(self, route: str, status: int) -> None:
        self.statuses[f"{route} {status}"] += 1

    def count_fault(self, route: str, kind: str) -> None:
        self.faults[kind] += 1
        self.faults_by_route[f"{route}.{kind}"] += 1

    def count(self, event: str, amount: int = 1) -> None:
        """Count a named event: ``generations``, ``cancels``, ``stream_disconnects``..."""
        self.events[event] += amount

    def snapshot(self) -> Dict[str, Any]:
        events = self.events
        return {
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
            "faults": dict(self.faults),
            "faults_by_route": dict(self.faults_by_route),
            "faults_total": sum(self.faults.values()),
            "generations_total": events["generations"],
            "cancels": events["cancels"],
            "stream_disconnects": events["stream_disconnects"],
            "stream_cancels": events["stream_cancels"],
            "sessions_created": events["sessions_created"],
            "sessions_expired": events["sessions_expired"],
            "sessions_finished": events["sessions_finished"],
            "heartbeats": events["heartbeats"],
            "promises_expired": events["promises_expired"],
            "events": dict(events),
        }
