"""HTTP problems: the exception route code raises to answer with a JSON error body."""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["Problem", "bad_request", "not_found", "gone", "too_many"]


class Problem(Exception):
    """An error answer: ``status`` plus the JSON body ``{"detail": ..., **extra}``.

    The error middleware turns it into the response; the message is meant for the client,
    so it must never hold an API key or a traceback.

    Example:
        >>> Problem(400, "num_samples must be a positive int").body()
        {'detail': 'num_samples must be a positive int'}
    """

    def __init__(self, status: int, detail: str, *, headers: Optional[Dict[str, str]] = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        return {"detail": self.detail, **self.extra}


def bad_request(detail: str, **extra: Any) -> Problem:
    return Problem(400, detail, **extra)


def not_found(detail: str) -> Problem:
    return Problem(404, detail)


def gone(detail: str) -> Problem:
    return Problem(410, detail)


def too_many(detail: str, **extra: Any) -> Problem:
    return Problem(429, detail, **extra)
