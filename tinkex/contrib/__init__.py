"""Integrations with other tools, each an optional module installed with its own extra.

* :mod:`tinkex.contrib.lm_eval`: an lm-evaluation-harness backend (``pip install 'tinkex[lm-eval]'``).

Nothing here is imported by ``import tinkex``; import the module you need.
"""

from typing import List

__all__: List[str] = []
