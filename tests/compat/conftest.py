"""Fixtures for the official-SDK compatibility tests: the side venv and a local server."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterator

import pytest

from .official_venv import OFFICIAL_VERSION, OfficialSDKUnavailable, default_venv_dir, ensure_official_venv

# Read at import: the autouse clean_environment fixture clears TINKEX_* before each test.
_SKIP_REASON = (
    "TINKEX_SKIP_COMPAT=1: the official tinker SDK compatibility tests were skipped on request"
    if os.environ.get("TINKEX_SKIP_COMPAT", "").strip().lower() in ("1", "true", "yes", "on")
    else None
)


@pytest.fixture(scope="session")
def official_python() -> Path:
    """The interpreter of the side venv with ``tinker==OFFICIAL_VERSION`` (built on first use).

    Fails (does not skip) when the venv cannot be built, so a CI without PyPI shows it; set
    ``TINKEX_SKIP_COMPAT=1`` to skip on purpose.
    """
    if _SKIP_REASON:
        pytest.skip(_SKIP_REASON)
    started = time.monotonic()
    try:
        python = ensure_official_venv(default_venv_dir(), OFFICIAL_VERSION)
    except OfficialSDKUnavailable as exc:
        problem = str(exc)
    else:
        print(f"official SDK venv ready in {time.monotonic() - started:.1f}s: {python}")
        return python
    pytest.fail(f"cannot set up the official tinker=={OFFICIAL_VERSION} SDK: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def compat_server() -> Iterator[object]:
    """A local server with the n-gram model, shared by the tests of one module."""
    from tinkex.server import LocalServer

    with LocalServer(models=["tinkex/ngram-small"]) as server:
        yield server
