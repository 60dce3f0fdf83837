"""JSONL files of a batch run: input lines, the resumable output file and its index.

Input: one JSON object per line, ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "tokens":
[...]}``, optionally with sampling overrides (``max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop``, ``num_samples``); other keys are ignored. An id is a string or
an integer (``1`` and ``"1"`` are different ids). Blank lines are skipped.

Output: one JSON object per line, appended with a single ``write`` each, so a crash leaves at
most one torn last line; :meth:`OutputFile.open` cuts such a line off and indexes every id
already written. Lines that could not be used are written as ``{"id": null, "line": N,
"error": {...}}`` (or with their id when it was readable and unique), so a re-run skips them
too. The index keeps a 128-bit digest per id, never the ids or lines themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, Iterator, Optional, Set, Tuple, Union

import attrs

from ..errors import DecodeError, TinkexError, ValidationError
from ..types import SamplingParams
from ._exec import BatchItem

__all__ = ["KeySet", "InputLine", "BadLine", "OutputFile", "plan_lines", "error_record", "Renderer",
           "count_lines"]

logger = logging.getLogger(__name__)

_OVERRIDES = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
_ERROR_ATTRIBUTES = ("field", "status_code", "request_id", "category", "retry_after")
_BLOCK = 1 << 20


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest(), "little")


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


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
        return _digest("id:" + _dumps(identifier))

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


@attrs.frozen
class InputLine:
    """A usable input line."""

    line: int
    id: Any
    item: BatchItem

    @property
    def key(self) -> int:
        return KeySet.id_key(self.id)


@attrs.frozen
class BadLine:
    """An input line that cannot be sampled; reported in the output, keyed by id or line number."""

    line: int
    error: TinkexError
    id: Any = None

    @property
    def key(self) -> int:
        return KeySet.line_key(self.line) if self.id is None else KeySet.id_key(self.id)

    def record(self) -> Dict[str, Any]:
        return {"id": self.id, "line": self.line, "error": error_record(self.error)}


def error_record(exc: BaseException) -> Dict[str, Any]:
    """The ``error`` object of an output line: type, message and the error's context attributes."""
    out: Dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    for name in _ERROR_ATTRIBUTES:
        value = getattr(exc, name, None)
        if value is not None:
            out[name] = value
    value = getattr(exc, "value", None)
    if isinstance(exc, ValidationError) and isinstance(value, (str, int, float, bool)):
        out["value"] = value
    return out


def _invalid(line: int, field: Optional[str], message: str, value: Any = None) -> ValidationError:
    return ValidationError(f"line {line}: {message}", field=field, value=value)


def _check_id(line: int, data: Dict[str, Any]) -> Any:
    if "id" not in data:
        raise _invalid(line, "id", "missing 'id'")
    identifier = data["id"]
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        raise _invalid(line, "id", f"'id' must be a string or an integer, got {identifier!r}", identifier)
    return identifier


def _prompt(line: int, data: Dict[str, Any]) -> Any:
    has_prompt, has_tokens = "prompt" in data, "tokens" in data
    if has_prompt == has_tokens:
        raise _invalid(line, "prompt", "give exactly one of 'prompt' (text) and 'tokens' (a list of ids)")
    if has_prompt:
        if not isinstance(data["prompt"], str):
            raise _invalid(line, "prompt", f"'prompt' must be a string, got {data['prompt']!r}", data["prompt"])
        return data["prompt"]
    tokens = data["tokens"]
    if not isinstance(tokens, list) or not all(type(t) is int and t >= 0 for t in tokens):
        raise _invalid(line, "tokens", "'tokens' must be a list of non-negative integers")
    return tokens


def _item(line: int, data: Dict[str, Any], defaults: SamplingParams) -> BatchItem:
    prompt = _prompt(line, data)
    overrides = {name: data[name] for name in _OVERRIDES if name in data}
    num_samples = data.get("num_samples")
    if num_samples is not None and (type(num_samples) is not int or num_samples < 1):
        raise _invalid(line, "num_samples", f"'num_samples' must be a positive integer, got {num_samples!r}",
                       num_samples)
    try:
        params = attrs.evolve(defaults, **overrides) if overrides else None
    except ValidationError as exc:
        raise _invalid(line, exc.field, str(exc), exc.value) from None
    return BatchItem(prompt, params, num_samples)


def parse_line(line: int, raw: bytes, defaults: SamplingParams) -> Union[InputLine, BadLine]:
    """Parse one input line; every problem becomes a :class:`BadLine` naming line and field."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return BadLine(line, DecodeError(f"line {line}: invalid JSON: {exc}"))
    if not isinstance(data, dict):
        return BadLine(line, _invalid(line, None, f"expected a JSON object, got {type(data).__name__}"))
    try:
        identifier = _check_id(line, data)
    except ValidationError as exc:
        return BadLine(line, exc)
    try:
        return InputLine(line, identifier, _item(line, data, defaults))
    except ValidationError as exc:
        return BadLine(line, exc, identifier)


def plan_lines(path: str, done: KeySet, defaults: SamplingParams) -> Iterator[Union[InputLine, BadLine]]:
    """Stream the input lines that still need an output line, in file order.

    A repeated id makes its later lines bad (keyed by line number, so the first keeps the id).
    """
    seen = KeySet()
    with open(path, "rb") as source:
        for number, raw in enumerate(source, 1):
            if not raw.strip():
                continue
            entry: Union[InputLine, BadLine] = parse_line(number, raw, defaults)
            if entry.id is not None and not seen.add(KeySet.id_key(entry.id)):
                entry = BadLine(number, _invalid(number, "id", f"duplicate id {entry.id!r}", entry.id))
            if entry.key not in done:
                yield entry


def count_lines(path: str) -> int:
    """Newline-terminated lines in ``path`` (plus a last unterminated one), read in 1 MiB blocks."""
    count, last = 0, b"\n"
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(_BLOCK), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


class OutputFile:
    """The append-only output JSONL: whole lines, one ``os.write`` each, under an exclusive lock.

    Thread-safety: one writer thread; the file lock keeps other processes out.

    Example:
        >>> out, done = OutputFile.open("results.jsonl")  # doctest: +SKIP
        >>> out.write({"id": 1, "sequences": []}); out.close()  # doctest: +SKIP
    """

    def __init__(self, fd: int, path: str) -> None:
        self._fd: Optional[int] = fd
        self.path = path

    @classmethod
    def open(cls, path: str) -> Tuple[OutputFile, KeySet]:
        """Repair a torn last line, index what is there, and open for appending."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _lock(fd, path)
            _cut_torn_line(fd, path)
            done = _index(path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path), done

    def write(self, record: Dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        data = (_dumps(record) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # a regular file takes it all at once; a short write only on a full disk
            view = view[os.write(self._fd, view):]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _lock(fd: int, path: str) -> None:
    """Hold an exclusive lock while writing, so two runs never append the same ids (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise TinkexError(f"{path} is being written by another run; wait for it or choose another file") from None


def _cut_torn_line(fd: int, path: str) -> None:
    size = os.fstat(fd).st_size
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        if end == size and block.endswith(b"\n"):
            return
        newline = block.rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    if end < size:
        logger.warning("%s: removed a partial last line (%d bytes) left by an interrupted run", path, size - end)
        os.ftruncate(fd, end)


def _index(path: str) -> KeySet:
    done = KeySet()
    with open(path, "rb") as existing:
        for number, raw in enumerate(existing, 1):
            key = _record_key(raw)
            if key is None:
                logger.warning("%s:%d: not an output line of tinkex batch; ignored", path, number)
            else:
                done.add(key)
    return done


def _record_key(raw: bytes) -> Optional[int]:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if record.get("id") is not None:
        return KeySet.id_key(record["id"])
    line = record.get("line")
    return KeySet.line_key(line) if type(line) is int else None


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
        self._tokenizer: Any = None

    def __getstate__(self) -> Dict[str, Any]:
        return {"tokenizer_name": self.tokenizer_name}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__(state["tokenizer_name"])  # type: ignore[misc]

    def _decode(self, tokens: Any) -> Optional[str]:
        if self.tokenizer_name is None:
            return None
        if self._tokenizer is None:
            from ..tokenizers import get_tokenizer

            self._tokenizer = get_tokenizer(self.tokenizer_name)
        return self._tokenizer.decode(tokens)

    def __call__(self, response: Any) -> Dict[str, Any]:
        return {"sequences": [
            {"text": self._decode(seq.tokens), "tokens": seq.tokens, "logprobs": seq.logprobs,
             "stop_reason": seq.stop_reason.value}
            for seq in response.sequences
        ]}
