"""``TINKER_LOG``: the one place tinkex attaches a log handler, and only when asked to."""

from __future__ import annotations

import logging
import threading
from typing import Optional

__all__ = ["apply_log_level"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}
_lock = threading.Lock()  # guards _handler: one stderr handler however many clients start
_handler: Optional[logging.Handler] = None


def apply_log_level(name: Optional[str]) -> None:
    """Turn on tinkex logging to stderr at ``name`` (``debug``/``info``/``warning``/``error``).

    With ``debug`` the HTTP pool's own log (urllib3) is shown too. Nothing happens for an
    unset or unknown level: a library leaves handlers to the application unless told.
    """
    level = _LEVELS.get((name or "").strip().lower())
    if level is None:
        return
    global _handler
    with _lock:
        if _handler is None:
            _handler = logging.StreamHandler()
            _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger("tinkex").addHandler(_handler)
    logging.getLogger("tinkex").setLevel(level)
    if level == logging.DEBUG:
        urllib3_logger = logging.getLogger("urllib3")
        urllib3_logger.setLevel(logging.DEBUG)
        if _handler not in urllib3_logger.handlers:
            urllib3_logger.addHandler(_handler)
