"""Former home of the local server's models, kept so existing imports keep working.

New code imports from :mod:`tinkex.server.models`.
"""

from .models import (
    DEFAULT_MODEL,
    ECHO_MODEL,
    Generation,
    LanguageModel,
    StopMatcher,
    TopkRow,
    UnknownModelError,
    available_models,
    check_prompt,
    check_topk,
    load_model,
)

__all__ = [
    "DEFAULT_MODEL",
    "ECHO_MODEL",
    "UnknownModelError",
    "Generation",
    "LanguageModel",
    "StopMatcher",
    "TopkRow",
    "available_models",
    "check_prompt",
    "check_topk",
    "load_model",
]
