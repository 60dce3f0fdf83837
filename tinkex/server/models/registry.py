"""The local server's model registry: names, the default, and loading by name.

The registry imports the models; they import only :mod:`.base`, so nothing imports back.

Example:
    >>> available_models()
    ['tinkex/ngram-small', 'tinkex/echo']
"""

from __future__ import annotations

from typing import List, Optional

from .base import LanguageModel, UnknownModelError
from .echo import ECHO_MODEL

__all__ = ["DEFAULT_MODEL", "ECHO_MODEL", "NGRAM_MODEL", "available_models", "load_model"]

NGRAM_MODEL = "tinkex/ngram-small"  # spelled here too so listing models does not import numpy
DEFAULT_MODEL = NGRAM_MODEL


def available_models() -> List[str]:
    """The names ``load_model`` accepts, the default first."""
    return [DEFAULT_MODEL, ECHO_MODEL]


def load_model(
    name: str, *, corpus_path: Optional[str] = None, cache_dir: Optional[str] = None
) -> LanguageModel:
    """Load a model by name; the n-gram model trains on first use and is cached on disk.

    Args:
        name: one of ``available_models()``.
        corpus_path: train the n-gram model on this file instead of the bundled Python docs
            (documents separated by form feeds).
        cache_dir: where trained models are kept (default ``$TINKEX_CACHE_DIR``, else
            ``~/.cache/tinkex``).

    Raises:
        UnknownModelError: ``name`` is not a known model.
    """
    if name == NGRAM_MODEL:
        from .ngram import NGramModel  # imports numpy: only when the n-gram model is wanted

        return NGramModel.load(corpus_path=corpus_path, cache_dir=cache_dir)
    if name == ECHO_MODEL:
        from .echo import EchoModel

        return EchoModel()
    raise UnknownModelError(
        f"unknown model {name!r}; available: {', '.join(available_models())}", field="base_model", value=name
    )
