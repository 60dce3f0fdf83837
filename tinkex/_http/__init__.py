"""The HTTP layer: the only package that imports ``requests``, ``urllib3`` or ``socket``.

Everything an HTTP library raises is turned into :mod:`tinkex.errors` here; layers above see
:class:`Response` values and typed errors only.
"""

from .transport import Response, Transport

__all__ = ["Response", "Transport"]
