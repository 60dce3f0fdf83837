"""Shared test set-up: a clean environment for every test."""

from __future__ import annotations

import os

import pytest

_CLEARED_PREFIXES = ("TINKER_", "TINKEX_", "CLOUDFLARE_ACCESS_")
_CLEARED_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clear TINKER_*, TINKEX_* and proxy variables so tests never see the developer's setup."""
    keep = {"TINKEX_CACHE_DIR", "TINKEX_SOAK_SECONDS", "TINKEX_FUZZ_EXAMPLES"}
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES) and name not in keep:
            monkeypatch.delenv(name, raising=False)
    for name in _CLEARED_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
