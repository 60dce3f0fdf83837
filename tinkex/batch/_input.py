"""The input file of a batch run: opened once, read once, each line capped in length.

Input: one JSON object per line, ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "tokens":
[...]}``, optionally with sampling overrides (``max_tokens``, ``temperature``, ``top_p``,
``top_k``, ``seed``, ``stop``, ``num_samples``); other keys are ignored. An id is a string or
an integer (``1`` and ``"1"`` are different ids). Blank lines are skipped.

Why read once: a pipe (``cat in.jsonl | tinkex batch /dev/stdin ...``, ``<(...)``) or a FIFO
can be read only once, so only a regular file is counted up front for the progress ETA.
Why a cap: a file with no newline (or a device such as ``/dev/zero``) is one endless "line";
a line longer than the cap becomes an error line and the reader skips to the next newline in
bounded memory. Devices other than a terminal are refused outright: they have no lines to skip to.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from typing import Any, BinaryIO, Dict, Iterator, List, Optional, Tuple, Union

import attrs

from ..errors import DecodeError, TinkexError, ValidationError
from ..types import SamplingParams
from ._exec import BatchItem
from ._records import KeySet, error_record

__all__ = ["InputLine", "BadLine", "DEFAULT_MAX_LINE_BYTES", "check_input", "open_input", "count_lines",
           "read_lines", "parse_line", "plan_lines"]

DEFAULT_MAX_LINE_BYTES = 16 << 20
_OVERRIDES = ("max_tokens", "temperature", "top_p", "top_k", "seed", "stop")
_BLOCK = 1 << 20


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


# -- opening ---------------------------------------------------------------------------------------


def _refuse_device(path: str) -> ValidationError:
    return ValidationError(f"the input {path!r} is a device, not a file, a pipe or a terminal", field="input_path",
                           value=path)


def check_input(path: str) -> None:
    """Fail early (before any server or session starts) on an input that cannot be read.

    Looks without reading: a FIFO is never opened here, since opening and closing it would
    cut off the program writing into it.
    """
    mode = os.stat(path).st_mode  # FileNotFoundError names the path
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if stat.S_ISBLK(mode):
        raise _refuse_device(path)
    if stat.S_ISCHR(mode):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not os.isatty(fd):
                raise _refuse_device(path)
        finally:
            os.close(fd)
    elif stat.S_ISREG(mode):
        with open(path, "rb"):  # PermissionError now rather than after start-up
            pass


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """Open ``path`` for the one read of the run; devices other than a terminal are refused."""
    with open(path, "rb") as source:
        mode = os.fstat(source.fileno()).st_mode
        if stat.S_ISBLK(mode) or (stat.S_ISCHR(mode) and not source.isatty()):
            raise _refuse_device(path)
        yield source


def count_lines(source: BinaryIO) -> Optional[int]:
    """Lines in a regular file (a last unterminated one included), then rewind; None for anything else."""
    if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
        return None
    start = source.tell()
    count, last = 0, b"\n"
    for block in iter(lambda: source.read(_BLOCK), b""):
        count += block.count(b"\n")
        last = block[-1:]
    source.seek(start)
    return count + (last != b"\n")


# -- reading ---------------------------------------------------------------------------------------


def read_lines(source: BinaryIO, cap: int) -> Iterator[Tuple[int, Optional[bytes]]]:
    """Yield ``(line number, line)``; ``None`` stands for a line longer than ``cap`` bytes.

    Memory stays under ``cap`` plus a block however long a line is.

    Example:
        >>> import io
        >>> list(read_lines(io.BytesIO(b"ab\\n" + b"x" * 9 + b"\\nc"), 4))
        [(1, b'ab\\n'), (2, None), (3, b'c')]
    """
    number = 0
    while True:
        raw = source.readline(cap + 1)
        if not raw:
            return
        number += 1
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield number, raw
            continue
        while raw and not raw.endswith(b"\n"):  # skip the rest of the oversized line
            raw = source.readline(_BLOCK)
        yield number, None


def _invalid(line: int, field: Optional[str], message: str, value: Any = None) -> ValidationError:
    return ValidationError(f"line {line}: {message}", field=field, value=value)


def _check_id(line: int, data: Dict[str, Any]) -> Union[str, int]:
    if "id" not in data:
        raise _invalid(line, "id", "missing 'id'")
    identifier = data["id"]
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        raise _invalid(line, "id", f"'id' must be a string or an integer, got {identifier!r}", identifier)
    return identifier


def _prompt(line: int, data: Dict[str, Any]) -> Union[str, List[int]]:
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


def _too_long(line: int, cap: int) -> BadLine:
    return BadLine(line, _invalid(line, "line", f"longer than {cap} bytes (the max_line_bytes limit); not read"))


def plan_lines(source: BinaryIO, done: KeySet, defaults: SamplingParams,
               max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[Union[InputLine, BadLine]]:
    """Stream the input lines that still need an output line, in file order.

    A repeated id makes its later lines bad (keyed by line number, so the first keeps the id).
    """
    seen = KeySet()
    for number, raw in read_lines(source, max_line_bytes):
        if raw is None:
            entry: Union[InputLine, BadLine] = _too_long(number, max_line_bytes)
        elif not raw.strip():
            continue
        else:
            entry = parse_line(number, raw, defaults)
        if entry.id is not None and not seen.add(KeySet.id_key(entry.id)):
            entry = BadLine(number, _invalid(number, "id", f"duplicate id {entry.id!r}", entry.id))
        if entry.key not in done:
            yield entry
