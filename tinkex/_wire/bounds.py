"""What one sample request can legitimately get back, so a decoder can refuse more before building it.

``max_response_bytes`` caps the bytes read, but not the objects decoded from them: a protobuf
of repeated empty sequences is one Python object per two bytes, and a gzip body of a few KB
decodes to the whole cap. The request itself says how much a true answer holds: ``num_samples``
sequences, at most ``max_tokens`` tokens (and logprob rows) each, one prompt-logprob row per
prompt token, at most the requested ``k`` per top-k row. A decoder given these bounds fails an
answer that exceeds them with :class:`~tinkex.errors.DecodeError` as soon as it sees the excess.

Example:
    >>> bounds = ResultBounds.for_request({"num_samples": 2, "sampling_params": {"max_tokens": 8},
    ...                                    "prompt": {"chunks": [{"type": "encoded_text", "tokens": [1, 2]}]}})
    >>> bounds.max_sequences, bounds.max_tokens, bounds.max_prompt_rows
    (2, 8, 3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import attrs

from ..errors import DecodeError

__all__ = ["ResultBounds"]

#: A top-k table nobody asked for may still come back; its rows are bounded, its k this wide.
UNREQUESTED_K = 20
# Generous JSON sizes (pretty-printed numbers included): only amplification is refused.
_JSON_BASE_BYTES = 1024 * 1024
_JSON_BYTES_PER_SEQUENCE = 1024
_JSON_BYTES_PER_VALUE = 96


def _positive_int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _prompt_tokens(prompt: Any) -> Optional[int]:
    """Tokens in a prompt body, when every chunk says how many it holds; else None (no bound)."""
    chunks = prompt.get("chunks") if isinstance(prompt, Mapping) else None
    if not isinstance(chunks, list):
        return None
    total = 0
    for chunk in chunks:
        tokens = chunk.get("tokens") if isinstance(chunk, Mapping) else None
        count = len(tokens) if isinstance(tokens, list) else _positive_int(
            chunk.get("expected_tokens") if isinstance(chunk, Mapping) else None)
        if count is None:
            return None
        total += count
    return total


@attrs.frozen
class ResultBounds:
    """Upper bounds on a sample result; None means unbounded (only the byte cap applies)."""

    max_sequences: Optional[int] = None
    max_tokens: Optional[int] = None
    max_sample_k: Optional[int] = None
    max_prompt_rows: Optional[int] = None
    max_prompt_k: Optional[int] = None

    @classmethod
    def for_request(cls, body: Mapping[str, Any]) -> ResultBounds:
        """The bounds of the request whose JSON body is ``body`` (an ``asample`` body)."""
        params = body.get("sampling_params")
        max_tokens = _positive_int(params.get("max_tokens")) if isinstance(params, Mapping) else None
        prompt = _prompt_tokens(body.get("prompt"))
        return cls(
            max_sequences=_positive_int(body.get("num_samples", 1)),
            max_tokens=max_tokens,
            max_sample_k=max(_positive_int(body.get("topk_sample_logprobs")) or 0, UNREQUESTED_K),
            max_prompt_rows=None if prompt is None else prompt + 1,  # the official SDK's leading None row
            max_prompt_k=max(_positive_int(body.get("topk_prompt_logprobs")) or 0, UNREQUESTED_K),
        )

    @property
    def json_bytes(self) -> Optional[int]:
        """The largest JSON answer worth parsing: generous, but far below one object per few bytes."""
        if self.max_sequences is None or self.max_tokens is None:
            return None
        per_sequence = _JSON_BYTES_PER_SEQUENCE + self.max_tokens * _JSON_BYTES_PER_VALUE * (2 + (self.max_sample_k
                                                                                                   or 0))
        prompt = (self.max_prompt_rows or 0) * _JSON_BYTES_PER_VALUE * (2 + (self.max_prompt_k or 0))
        return _JSON_BASE_BYTES + self.max_sequences * per_sequence + prompt

    def check_json_size(self, size: int, what: str) -> None:
        limit = self.json_bytes
        if limit is not None and size > limit:
            raise DecodeError(f"{what}: {size} bytes of JSON, more than the request can produce ({limit})")

    def check_json_result(self, value: Any, what: str) -> None:
        """Count a decoded JSON result's sequences and rows before typed values are built from it."""
        if not isinstance(value, Mapping):
            return
        sequences = value.get("sequences")
        if isinstance(sequences, list):
            _check(len(sequences), self.max_sequences, f"{what}.sequences")
            for sequence in sequences:
                if isinstance(sequence, Mapping):
                    for field in ("tokens", "logprobs", "topk_logprobs"):
                        _check(_length(sequence.get(field)), self.max_tokens, f"{what}.sequences[].{field}")
        for field in ("prompt_logprobs", "topk_prompt_logprobs"):
            _check(_length(value.get(field)), self.max_prompt_rows, f"{what}.{field}")


def _length(value: Any) -> int:
    return len(value) if isinstance(value, list) else 0


def _check(count: int, limit: Optional[int], name: str) -> None:
    if limit is not None and count > limit:
        raise DecodeError(f"{name}: {count} entries, more than the request can produce ({limit})")
