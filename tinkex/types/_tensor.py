"""Tensors on the wire (``TensorData``) and the prompt draws of ``prompt_alt_tokens_k``.

A ``TensorData`` is a flat list of numbers with a dtype (``int64`` or ``float32``) and a
shape, dense row-major, or sparse CSR when ``sparse_crow_indices`` / ``sparse_col_indices``
are set (``data`` then holds only the listed cells). ``SampleRequest.target_prompt_logprobs``
is such a tensor of token ids ``[len(prompt) - 1, K]`` (``-1`` = nothing asked), and the
answer's ``target_prompt_logprobs`` has the same shape and layout in float32.

Example:
    >>> ids = TensorData(data=[5, -1, 7, 8], dtype="int64", shape=[2, 2])
    >>> ids.rows()
    [[5, -1], [7, 8]]
    >>> sparse = TensorData(data=[5, 8], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1, 2],
    ...                     sparse_col_indices=[0, 1])
    >>> sparse.rows(fill=-1)
    [[5, -1], [-1, 8]]
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import attrs

from ..errors import DecodeError, ValidationError
from ._wire import get_field, require_mapping

__all__ = ["TensorData", "PromptAltTokens", "TENSOR_DTYPES"]

TENSOR_DTYPES = ("int64", "float32")
Number = Union[int, float]


def _numbers(value: Any, what: str) -> List[Number]:
    if not isinstance(value, list) or not all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    ):
        raise DecodeError(f"{what} must be a list of numbers")
    return list(value)


def _ints(value: Any, what: str) -> Optional[List[int]]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        raise DecodeError(f"{what} must be a list of ints")
    return list(value)


@attrs.frozen
class TensorData:
    """A tensor as the API sends it: flat ``data``, ``dtype``, ``shape`` and optional CSR indices."""

    data: List[Number]
    dtype: str
    shape: Optional[List[int]] = None
    sparse_crow_indices: Optional[List[int]] = None
    sparse_col_indices: Optional[List[int]] = None

    @property
    def is_sparse(self) -> bool:
        return self.sparse_crow_indices is not None

    def check(self, what: str) -> None:
        """Raise ``ValidationError`` naming ``what`` unless dtype, shape and CSR indices agree."""
        if self.dtype not in TENSOR_DTYPES:
            raise ValidationError(f"{what}.dtype must be one of {TENSOR_DTYPES}, got {self.dtype!r}",
                                  field=what, value=self.dtype)  # fmt: skip
        shape = self.shape if self.shape is not None else [len(self.data)]
        if any(size < 0 for size in shape):
            raise ValidationError(f"{what}.shape must not be negative, got {shape}", field=what, value=shape)
        if not self.is_sparse:
            cells = 1
            for size in shape:
                cells *= size
            if cells != len(self.data):
                raise ValidationError(f"{what}: shape {shape} needs {cells} values, got {len(self.data)}",
                                      field=what, value=shape)  # fmt: skip
            return
        self._check_csr(what, shape)

    def _check_csr(self, what: str, shape: List[int]) -> None:
        crow, col = self.sparse_crow_indices or [], self.sparse_col_indices
        if len(shape) != 2 or col is None:
            raise ValidationError(f"{what}: a sparse CSR tensor needs a 2-D shape and both index lists", field=what)
        rows, columns = shape
        ordered = all(a <= b for a, b in zip(crow, crow[1:]))
        if len(crow) != rows + 1 or not crow or crow[0] != 0 or not ordered or crow[-1] != len(self.data):
            raise ValidationError(f"{what}: sparse_crow_indices must rise from 0 to len(data) over {rows} rows",
                                  field=what, value=crow)  # fmt: skip
        if len(col) != len(self.data) or any(not 0 <= c < columns for c in col):
            raise ValidationError(f"{what}: sparse_col_indices must hold one column in [0, {columns}) per value",
                                  field=what, value=col)  # fmt: skip

    def rows(self, fill: Number = 0) -> List[List[Number]]:
        """The 2-D tensor as dense rows (CSR cells not listed take ``fill``); call ``check`` first."""
        shape = self.shape if self.shape is not None else [1, len(self.data)]
        rows, columns = (shape[0], shape[1]) if len(shape) == 2 else (1, len(self.data))
        if not self.is_sparse:
            return [list(self.data[r * columns : (r + 1) * columns]) for r in range(rows)]
        crow, col = self.sparse_crow_indices or [], self.sparse_col_indices or []
        dense = [[fill] * columns for _ in range(rows)]
        for r in range(rows):
            for index in range(crow[r], crow[r + 1]):
                dense[r][col[index]] = self.data[index]
        return dense

    def to_numpy(self) -> Any:
        """The tensor as a numpy array of its shape (dense; CSR cells not listed are 0; needs numpy)."""
        from ._arrays import numpy

        np = numpy()
        shape = self.shape if self.shape is not None else [len(self.data)]
        if self.is_sparse:
            return np.asarray(self.rows(fill=0), dtype=self.dtype).reshape(shape)
        return np.asarray(self.data, dtype=self.dtype).reshape(shape)

    def tolist(self) -> Any:
        """The tensor as nested lists of its shape (dense; CSR cells not listed are 0), no numpy needed."""
        shape = self.shape if self.shape is not None else [len(self.data)]
        flat: List[Any] = [v for row in self.rows(fill=0) for v in row] if self.is_sparse else list(self.data)
        for size in reversed(shape[1:]):
            flat = [flat[i : i + size] for i in range(0, len(flat), size)] if size else [[] for _ in flat]
        return flat

    @classmethod
    def from_numpy(cls, array: Any) -> TensorData:
        """A dense tensor from a numpy array of integers (int64) or floats (float32)."""
        dtype = "int64" if array.dtype.kind in "iub" else "float32"
        return cls(data=array.astype(dtype).ravel().tolist(), dtype=dtype, shape=list(array.shape))

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"data": list(self.data), "dtype": self.dtype}
        for name in ("shape", "sparse_crow_indices", "sparse_col_indices"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value)
        return out

    @classmethod
    def from_json(cls, data: Any) -> TensorData:
        what = "TensorData"
        mapping = require_mapping(data, what)
        dtype = get_field(mapping, "dtype", what, str)
        if dtype not in TENSOR_DTYPES:
            raise DecodeError(f"{what}: dtype must be one of {TENSOR_DTYPES}, got {dtype!r}")
        return cls(
            data=_numbers(get_field(mapping, "data", what, list), f"{what}.data"),
            dtype=dtype,
            shape=_ints(mapping.get("shape"), f"{what}.shape"),
            sparse_crow_indices=_ints(mapping.get("sparse_crow_indices"), f"{what}.sparse_crow_indices"),
            sparse_col_indices=_ints(mapping.get("sparse_col_indices"), f"{what}.sparse_col_indices"),
        )


@attrs.frozen
class PromptAltTokens:
    """Draws at every prompt position after the first: int64 ``tokens`` and their float32
    ``logprobs``, both ``[len(prompt) - 1, k]``; row ``i`` holds alternatives to ``prompt[i + 1]``."""

    tokens: TensorData
    logprobs: TensorData

    def to_json(self) -> Dict[str, Any]:
        return {"tokens": self.tokens.to_json(), "logprobs": self.logprobs.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> PromptAltTokens:
        mapping = require_mapping(data, "PromptAltTokens")
        return cls(
            tokens=TensorData.from_json(get_field(mapping, "tokens", "PromptAltTokens")),
            logprobs=TensorData.from_json(get_field(mapping, "logprobs", "PromptAltTokens")),
        )
