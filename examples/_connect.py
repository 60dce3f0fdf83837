"""Where the examples sample from: ``$TINKER_BASE_URL`` when it is set, else a local server started here.

Every example runs with nothing but tinkex installed (``make demo`` installs it): by default it
starts the local Tinker-compatible server in-process and samples from its byte n-gram model.
To run an example against a real Tinker deployment instead::

    TINKER_BASE_URL=https://... TINKER_API_KEY=tml-... TINKEX_EXAMPLE_MODEL=<base model> python examples/quickstart.py

(the model's tokenizer must be available offline; see ``tinkex.tokenizers``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import tinkex

MODEL = os.environ.get("TINKEX_EXAMPLE_MODEL", "tinkex/ngram-small")


@contextlib.contextmanager
def connect(**server_options: Any) -> Iterator[tinkex.ServiceClient]:
    """A ServiceClient, closed on exit; ``server_options`` go to the local server (e.g. ``faults=``)."""
    if os.environ.get("TINKER_BASE_URL"):
        with tinkex.ServiceClient() as service:  # TINKER_API_KEY / TINKER_BASE_URL
            yield service
        return
    from tinkex.server import LocalServer  # the "server" extra

    with LocalServer(**server_options) as server, tinkex.ServiceClient(
        base_url=server.base_url, api_key=server.api_key
    ) as service:
        yield service
