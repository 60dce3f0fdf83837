"""numpy views of sampling results (the official SDK's ``*_np`` fields), numpy only when installed.

tinkex keeps results as plain lists (numpy is not a dependency); these helpers build the arrays
the official SDK exposes, with its dtypes and fill values: int32 token ids, float32 logprobs,
``NaN`` for a prompt position without a logprob, and top-k rows padded with token 0 and logprob
-99999.0.

Example:
    >>> rows = [None, [(5, -0.5), (6, -1.5)]]
    >>> topk = topk_arrays(rows)  # doctest: +SKIP
    >>> topk.token_ids.tolist(), topk.logprobs.tolist()  # doctest: +SKIP
    ([[0, 0], [5, 6]], [[-99999.0, -99999.0], [-0.5, -1.5]])
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional, Sequence, Tuple

import attrs

__all__ = ["MASK_LOGPROB", "TensorDtype", "TopkArrays", "numpy", "float32_array", "int32_array", "topk_arrays"]

TensorDtype = Literal["int64", "float32"]
MASK_LOGPROB = -99999.0


def numpy() -> Any:
    """The numpy module; ``ImportError`` saying how to get it when it is not installed."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImportError("the *_np accessors need numpy: pip install numpy") from exc
    return np


@attrs.frozen
class TopkArrays:
    """Top-k alternatives as two dense ``(length, k)`` matrices: int32 ``token_ids`` and float32
    ``logprobs``; empty cells hold token 0 and logprob -99999.0 (the official ``TopkLogprobs``)."""

    token_ids: Any
    logprobs: Any


def int32_array(values: Sequence[int]) -> Any:
    return numpy().asarray(values, dtype=numpy().int32)


def float32_array(values: Sequence[Optional[float]]) -> Any:
    """Float32, with ``NaN`` where a value is None."""
    return numpy().asarray([float("nan") if v is None else v for v in values], dtype=numpy().float32)


def topk_arrays(rows: Sequence[Optional[List[Tuple[int, float]]]]) -> TopkArrays:
    np = numpy()
    k = max((len(row) for row in rows if row), default=0)
    token_ids = np.zeros((len(rows), k), dtype=np.int32)
    logprobs = np.full((len(rows), k), MASK_LOGPROB, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, (token, logprob) in enumerate(row or ()):
            token_ids[i, j] = token
            logprobs[i, j] = logprob
    return TopkArrays(token_ids=token_ids, logprobs=logprobs)
