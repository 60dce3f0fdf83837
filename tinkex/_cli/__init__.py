"""Parts of the ``tinkex`` command (:mod:`tinkex.cli`): what it prints for results and for errors."""

from .messages import describe
from .output import emit, print_response, stream_chunks

__all__ = ["describe", "emit", "print_response", "stream_chunks"]
