"""The package version, kept in ``tinkex/VERSION`` so packaging reads it without importing tinkex."""

from pathlib import Path

__version__ = (Path(__file__).with_name("VERSION")).read_text(encoding="utf-8").strip()
