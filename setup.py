"""Packaging shim: all metadata lives in setup.cfg."""
import sys

if sys.version_info < (3, 9):
    sys.exit("tinkex needs Python 3.9 or newer; this is %d.%d." % sys.version_info[:2])

from setuptools import setup  # noqa: E402

setup()
