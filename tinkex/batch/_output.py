"""The output file of a batch run: whole lines appended, a torn last line repaired, nothing else touched.

Lines are appended with one ``write`` each under an exclusive lock, so a crash leaves at most
one torn last line, which the next run cuts off before indexing the ids already written.

Only a file that tinkex batch wrote is ever changed. It is recognised by its content: every
complete line starts with ``{"id":`` (compact JSON, id first, see :mod:`._records`), parses as
a JSON object and holds ``sequences`` or ``error``, and a last line without its newline is a
beginning of such a line. Why the content rather than a header line or a side file: the output
stays plain JSONL in which every line is a result, the check costs nothing beyond the index a
resume reads anyway, and it survives copies, renames and concatenation. Any other file (binary
or text given by mistake, the JSONL of another tool, a symlink to one) is refused, naming the
line that gave it away, and left byte for byte as it was. So are devices and FIFOs: they are
never opened for writing.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from typing import Any, Dict, Optional, Tuple

from ..errors import TinkexError, ValidationError
from ._input import read_lines
from ._records import RECORD_PREFIX, KeySet, dumps

__all__ = ["OutputFile", "check_output", "MAX_OUTPUT_LINE_BYTES"]

logger = logging.getLogger(__name__)

MAX_OUTPUT_LINE_BYTES = 1 << 30  # far above any result (128 samples x 32k tokens with logprobs is ~130 MB)
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path: str, mode: int) -> Optional[ValidationError]:
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return ValidationError(f"the output {path!r} is {kind}, not a regular file; give the path of a file",
                           field="output_path", value=path)


def _foreign(path: str, line: int, why: str) -> ValidationError:
    return ValidationError(
        f"{path!r} is not an output file of tinkex batch (line {line}: {why}); it was left as it was: "
        "give a new output path, or the output of an earlier tinkex batch run to resume it",
        field="output_path", value=path,
    )


def _starts_like_ours(head: bytes) -> bool:
    """Whether ``head`` begins a tinkex batch output line (or is a beginning of its prefix)."""
    return head.startswith(RECORD_PREFIX) or RECORD_PREFIX.startswith(head)


def check_output(path: str) -> None:
    """Refuse early (before any server or session starts) an output that is not a file or not ours.

    Only the type and the first bytes are looked at here; :meth:`OutputFile.open` checks every line.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    refusal = _not_regular(path, mode)
    if refusal is not None:
        raise refusal
    with open(path, "rb") as existing:
        head = existing.read(len(RECORD_PREFIX))
    if head and not _starts_like_ours(head):
        raise _foreign(path, 1, f"it starts with {head!r}")


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
        """Check the file is ours, index what is there, cut a torn last line and open for appending.

        Raises:
            ValidationError: ``path`` is not a regular file, or not a tinkex batch output (untouched).
            TinkexError: another run holds the file.
        """
        check_output(path)  # a FIFO or device is refused before it is opened
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NONBLOCK, 0o644)
        try:
            refusal = _not_regular(path, os.fstat(fd).st_mode)  # replaced since the check
            if refusal is not None:
                raise refusal
            os.set_blocking(fd, True)
            _lock(fd, path)
            done, end = _scan(fd, path)
            _cut_torn_line(fd, path, end)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path), done

    def write(self, record: Dict[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        data = (dumps(record) + "\n").encode("utf-8")
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


def _scan(fd: int, path: str) -> Tuple[KeySet, int]:
    """Index the ids of every complete line; return them and where the complete lines end.

    Raises ValidationError at the first line tinkex batch did not write; nothing is changed.
    """
    done = KeySet()
    end = 0
    with os.fdopen(os.dup(fd), "rb") as existing:
        existing.seek(0)
        for number, raw in read_lines(existing, MAX_OUTPUT_LINE_BYTES):
            if raw is None:
                raise _foreign(path, number, f"longer than {MAX_OUTPUT_LINE_BYTES} bytes")
            if not raw.endswith(b"\n"):  # a torn last line: only a beginning of one of ours is cut
                if not _starts_like_ours(raw[:len(RECORD_PREFIX)]):
                    raise _foreign(path, number, "the last line has no newline and is not a tinkex batch line")
                break
            key = _record_key(raw)
            if key is None:
                raise _foreign(path, number, f"{_excerpt(raw)} is not a tinkex batch output line")
            done.add(key)
            end += len(raw)
    return done, end


def _excerpt(raw: bytes) -> str:
    text = raw.rstrip(b"\n")
    return repr(text[:40] + (b"..." if len(text) > 40 else b""))


def _record_key(raw: bytes) -> Optional[int]:
    if not raw.startswith(RECORD_PREFIX):
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or ("sequences" not in record and "error" not in record):
        return None
    if record["id"] is not None:
        return KeySet.id_key(record["id"])
    line = record.get("line")
    return KeySet.line_key(line) if type(line) is int else None


def _cut_torn_line(fd: int, path: str, end: int) -> None:
    size = os.fstat(fd).st_size
    if end < size:
        logger.warning("%s: removed a partial last line (%d bytes) left by an interrupted run", path, size - end)
        os.ftruncate(fd, end)
