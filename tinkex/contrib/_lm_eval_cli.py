"""``tinkex eval``: lm-eval's own command line, run in this process with the ``tinkex`` model registered."""

from __future__ import annotations

import os
import sys
from typing import List, Sequence

from .lm_eval import close_all

__all__ = ["hide_api_key", "run"]

_MODEL_ARGS_FLAGS = ("--model_args", "-a")


def _without_api_key(value: str) -> str:
    """``value`` (``k=v,k2=v2``) without its ``api_key`` item, which goes to ``TINKER_API_KEY`` instead."""
    kept = []
    for item in value.split(","):
        if item.strip().startswith("api_key="):
            os.environ["TINKER_API_KEY"] = item.split("=", 1)[1]
        else:
            kept.append(item)
    return ",".join(kept)


def hide_api_key(argv: Sequence[str]) -> List[str]:
    """``argv`` with any ``api_key`` model arg moved to the environment, so lm-eval never logs or saves it.

    Example:
        >>> hide_api_key(["--model_args", "base_model=m,api_key=tml-x", "--tasks", "t"])  # doctest: +SKIP
        ['--model_args', 'base_model=m', '--tasks', 't']
    """
    out: List[str] = []
    in_model_args = False
    for arg in argv:
        if arg.startswith("--model_args="):
            arg, in_model_args = "--model_args=" + _without_api_key(arg.split("=", 1)[1]), False
        elif in_model_args and not arg.startswith("-"):
            arg = _without_api_key(arg)
        else:
            in_model_args = arg in _MODEL_ARGS_FLAGS
        if arg and arg != "--model_args=":
            out.append(arg)
    # drop a flag left with no value (api_key was its only one)
    return [arg for i, arg in enumerate(out)
            if arg not in _MODEL_ARGS_FLAGS or (i + 1 < len(out) and not out[i + 1].startswith("-"))]


def run(argv: Sequence[str]) -> int:
    """Run ``lm-eval ARGS`` (lm-eval reads ``sys.argv``, so it is swapped for the call); its exit code."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *hide_api_key(argv)]
    try:
        cli_evaluate()
    except SystemExit as exc:  # its argparse (--help, bad usage) or an explicit exit
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = saved
        close_all()
    return 0
