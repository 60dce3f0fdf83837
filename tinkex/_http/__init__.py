"""The HTTP layer: the only package that imports ``requests``, ``urllib3`` or ``socket``.

Everything an HTTP library raises is turned into :mod:`tinkex.errors` here (by
:mod:`tinkex._http.errors`); layers above see :class:`Response` values, open
:class:`EventStream` answers and typed errors only. :class:`Sender` is what they need of a
transport; :class:`FakeTransport` is the in-memory one unit tests drive the loops with.
"""

from .fake import FakeCall, FakeTransport
from .sse import EventStream
from .transport import Response, Sender, Transport
from .watchdog import Abort

__all__ = ["Abort", "EventStream", "FakeCall", "FakeTransport", "Response", "Sender", "Transport"]
