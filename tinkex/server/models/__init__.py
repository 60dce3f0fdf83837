"""The local server's language models: the interface (:mod:`.base`), the registry, and the
``tinkex/ngram-small`` and ``tinkex/echo`` models.

Example:
    >>> from tinkex.server.models import ECHO_MODEL, load_model
    >>> load_model(ECHO_MODEL).name
    'tinkex/echo'
"""

from .base import (
    Generation,
    LanguageModel,
    StopMatcher,
    TopkRow,
    UnknownModelError,
    check_prompt,
    check_token_ids,
    check_topk,
)
from .echo import EchoModel
from .registry import DEFAULT_MODEL, ECHO_MODEL, NGRAM_MODEL, available_models, load_model

__all__ = [
    "DEFAULT_MODEL",
    "ECHO_MODEL",
    "NGRAM_MODEL",
    "EchoModel",
    "Generation",
    "LanguageModel",
    "StopMatcher",
    "TopkRow",
    "UnknownModelError",
    "available_models",
    "check_prompt",
    "check_token_ids",
    "check_topk",
    "load_model",
]
