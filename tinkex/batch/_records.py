"""Output records of a batch run and the keys that say which input lines they answer.

Every output line is one JSON object written compactly with ``"id"`` as its first key:
``{"id":…,"sequences":[…]}`` for a sampled prompt, ``{"id":…,"error":{…}}`` for a prompt that
failed for a reason of its own and ``{"id":…,"line":N,"error":{…}}`` for an unusable input
line. That fixed shape is how a re-run recognises a file it wrote (see :mod:`._output`).

A key is a 128-bit digest of an id (or of the line number of an id-less error line), so the
index of a file of ten million lines holds digests, never ids or lines.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Set

from ..errors import ValidationError

if TYPE_CHECKING:
    from ..tokenizers import Tokenizer
    from ..types import SampleResponse

__all__ = ["KeySet", "dumps", "error_record", "Renderer", "RECORD_PREFIX"]

RECORD_PREFIX = b'{"id":'  # how every output line starts: compact JSON, id first
_ERROR_ATTRIBUTES = ("field", "status_code", "request_id", "category", "retry_after")


def dumps(value: Any) -> str:
    """Compact JSON, UTF-8 kept as is (the form every output line is written in)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), "little")


class KeySet:
    """Ids (and line numbers of id-less error lines) already seen, as 128-bit digests.

    Not thread-safe: the batch runner's thread owns it.

    Example:
        >>> keys = KeySet()
        >>> keys.add(KeySet.id_key("a")), keys.add(KeySet.id_key("a")), KeySet.id_key(1) in keys
        (True, False, False)
    """

    def __init__(self) -> None:
        self._digests: Set[int] = set()

    @staticmethod
    def id_key(identifier: Any) -> int:
        return _digest("id:" + dumps(identifier))

    @staticmethod
    def line_key(line: int) -> int:
        return _digest(f"line:{line}")

    def add(self, key: int) -> bool:
        """Add ``key``; False if it was already there."""
        if key in self._digests:
            return False
        self._digests.add(key)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._digests

    def __len__(self) -> int:
        return len(self._digests)


def error_record(exc: BaseException) -> Dict[str, Any]:
    """The ``error`` object of an output line: type, message and the error's context attributes.

    Example:
        >>> error_record(ValidationError("line 3: bad", field="id", value=7))
        {'type': 'ValidationError', 'message': 'line 3: bad', 'field': 'id', 'value': 7}
    """
    out: Dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for name in _ERROR_ATTRIBUTES:
        value = getattr(exc, name, None)
        if value is not None:
            out[name] = value
    value = getattr(exc, "value", None)
    if isinstance(exc, ValidationError) and isinstance(value, (str, int, float, bool)):
        out["value"] = value
    return out


class Renderer:
    """Turns a SampleResponse into an output line's ``sequences`` (picklable, runs in workers).

    The tokenizer is looked up by name where the renderer runs; with no tokenizer, ``text`` is null.
    Thread-safety: safe to share; at worst two threads both look the tokenizer up once.

    Example:
        >>> from tinkex.types import SampledSequence, SampleResponse
        >>> Renderer("tinkex/byte")(SampleResponse(sequences=[SampledSequence(tokens=[104, 105])]))["sequences"][0]
        {'text': 'hi', 'tokens': [104, 105], 'logprobs': None, 'stop_reason': 'stop'}
    """

    def __init__(self, tokenizer_name: Optional[str]) -> None:
        self.tokenizer_name = tokenizer_name
        self._tokenizer: Optional[Tokenizer] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"tokenizer_name": self.tokenizer_name}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.tokenizer_name = state["tokenizer_name"]
        self._tokenizer = None

    def _decode(self, tokens: Sequence[int]) -> Optional[str]:
        if self.tokenizer_name is None:
            return None
        if self._tokenizer is None:
            from ..tokenizers import get_tokenizer

            self._tokenizer = get_tokenizer(self.tokenizer_name)
        return self._tokenizer.decode(tokens)

    def __call__(self, response: SampleResponse) -> Dict[str, Any]:
        return {"sequences": [
            {"text": self._decode(seq.tokens), "tokens": seq.tokens, "logprobs": seq.logprobs,
             "stop_reason": seq.stop_reason.value}
            for seq in response.sequences
        ]}
