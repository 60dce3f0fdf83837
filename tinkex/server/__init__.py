"""The local Tinker-compatible sampling server (``tinkex serve``), installed with the ``server`` extra.

Example:
    >>> from tinkex.server import LocalServer
    >>> with LocalServer(models=["tinkex/echo"], poll_hold_s=1.0) as server:  # doctest: +SKIP
    ...     print(server.base_url)
    http://127.0.0.1:54321
"""

from ._settings import ServerSettings
from .faults import FaultProfile
from .local import LocalServer

__all__ = ["LocalServer", "FaultProfile", "ServerSettings"]
