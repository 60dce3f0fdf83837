"""Compatibility with the official tinker SDK (run in a side virtualenv)."""
