"""``TINKER_LOG``: the one place tinkex attaches a log handler, and only when asked to.

What each level shows (all on stderr, under the ``tinkex`` logger):

* ``info``: the session created and the server it is on, each sampling client's model, and
  anything that changes what the caller sees (a session renewed, a fallback taken);
* ``debug``: also one line per HTTP call, with its route, status, time and request id.

urllib3's own log stays below tinkex's: its per-connection DEBUG lines say less than tinkex's
per-call line, so they are left to whoever configures the root logger.

Example:
    >>> apply_log_level(None)  # unset: nothing happens
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from typing import Any, Mapping, Optional

__all__ = ["apply_log_level", "LazyRequestId"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_lock = threading.Lock()  # guards _handler and _level: one stderr handler however many clients start
_handler: Optional[logging.Handler] = None
_level: Optional[int] = None  # the most verbose level turned on so far


def apply_log_level(name: Optional[str]) -> None:
    """Turn on tinkex logging to stderr at ``name`` (``debug``/``info``/``warning``/``error``).

    Nothing happens for an unset or unknown level: a library leaves handlers to the application
    unless told. A later call never makes the log quieter than an earlier one did, so a client
    created with ``TINKER_LOG=info`` keeps the ``tinkex --debug`` command's DEBUG lines.
    """
    level = _LEVELS.get((name or "").strip().lower())
    if level is None:
        return
    global _handler, _level
    with _lock:
        if _handler is None:
            _handler = _StderrHandler()
            _handler.setFormatter(logging.Formatter(_FORMAT))
            logging.getLogger("tinkex").addHandler(_handler)
        _level = level if _level is None else min(_level, level)
        logging.getLogger("tinkex").setLevel(_level)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a line is written, not as it was when logging was
    turned on: a stderr replaced since (a notebook, a test's capture) and closed must not turn
    every later line into a "Logging error"."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


class LazyRequestId:
    """The request id of one HTTP call for a DEBUG line, worked out only if the line is written.

    Looks at the answer's ``X-Request-Id`` header, then a ``request_id`` in its JSON body (an
    asample promise, an error), then a ``request_id`` in the request's JSON body (a poll);
    ``-`` when there is none.

    Example:
        >>> str(LazyRequestId(b'{"request_id":"req-7"}', b"", {}))
        'req-7'
    """

    __slots__ = ("_payload", "_content", "_headers")

    def __init__(self, payload: Optional[bytes], content: bytes, headers: Mapping[str, str]) -> None:
        self._payload = payload
        self._content = content
        self._headers = headers

    def __str__(self) -> str:
        header = self._headers.get("x-request-id")
        if header:
            return str(header)
        for body in (self._content, self._payload):
            found = _request_id_in(body)
            if found:
                return found
        return "-"


def _request_id_in(body: Optional[bytes]) -> Optional[str]:
    if not body or body[:1] != b"{" or len(body) > 65536:
        return None
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        return None
    value = parsed.get("request_id") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None
