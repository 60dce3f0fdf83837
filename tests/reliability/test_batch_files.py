"""``tinkex batch`` given the wrong files: nothing lost, nothing stuck, no file touched that it did not write.

Each test runs the command as a subprocess, the way users meet these cases, against the
in-process server of ``--local`` or a :class:`~tinkex.server.LocalServer` started here. The
subprocess gets an address-space limit, so a runaway read ends in MemoryError rather than
taking the shared machine's memory, and a timeout, so a blocked open fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tinkex.server import LocalServer

ECHO = "tinkex/echo"
MEMORY_LIMIT = 3 << 30
TIMEOUT_S = 60
# The limit is set by the child itself: preexec_fn is unsafe while this process runs server threads.
LIMITED_TINKEX = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_LIMIT}, {MEMORY_LIMIT})); "
                  "from tinkex.cli import main; sys.exit(main())")


def tinkex_batch(*args: str, stdin: Optional[bytes] = None, env: Optional[Dict[str, str]] = None,
                 local: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", LIMITED_TINKEX, "batch", *args, "--model", ECHO, "--max-tokens", "2"]
    if local:
        command.append("--local")
    return subprocess.run(command, input=stdin if stdin is not None else b"", capture_output=True,
                          timeout=TIMEOUT_S, env={**os.environ, **(env or {})})


def prompt_lines(count: int) -> bytes:
    return b"".join(json.dumps({"id": f"p{i}", "tokens": [65 + i % 26]}).encode() + b"\n" for i in range(count))


def records(path: Path) -> List[Dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(prompt_lines(5))
    return path


# -- an output file tinkex batch did not write ------------------------------------------------------

FOREIGN = {
    "no newline at all": b"x" * 200_000,
    "text whose last line has no newline": b"meeting notes\nremember the milk",
    "another tool's JSONL": b'{"id": 1, "answer": "a"}\n{"id": 2, "answer": "b"}\n',
    "an input file in compact form": b'{"id":1,"prompt":"hi"}\n',
    "our lines, then a foreign one": b'{"id":"p0","sequences":[]}\nhello\n',
    "binary": bytes(range(256)) * 100,
}


@pytest.mark.parametrize("content", FOREIGN.values(), ids=list(FOREIGN))
def test_an_output_file_it_did_not_write_is_refused_and_left_byte_for_byte(source: Path, tmp_path: Path,
                                                                          content: bytes) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    done = tinkex_batch(str(source), str(out))
    assert done.returncode == 1, done.stderr
    assert b"is not an output file of tinkex batch" in done.stderr and b"left as it was" in done.stderr
    assert out.read_bytes() == content


def test_a_symlink_to_a_foreign_file_is_refused_and_the_target_kept(source: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious.bin"
    target.write_bytes(FOREIGN["no newline at all"])
    out = tmp_path / "out.jsonl"
    out.symlink_to(target)
    done = tinkex_batch(str(source), str(out))
    assert done.returncode == 1 and b"is not an output file of tinkex batch" in done.stderr
    assert target.read_bytes() == FOREIGN["no newline at all"] and out.is_symlink()


@pytest.mark.parametrize("torn", [b'{"id":"p3","sequ', b'{"i', b"{"])
def test_a_torn_line_of_its_own_is_still_repaired(source: Path, tmp_path: Path, torn: bytes) -> None:
    out = tmp_path / "out.jsonl"
    assert tinkex_batch(str(source), str(out)).returncode == 0
    kept = b"".join(out.read_bytes().splitlines(keepends=True)[:2])
    out.write_bytes(kept + torn)  # a crash in the middle of the third write
    done = tinkex_batch(str(source), str(out))
    assert done.returncode == 0, done.stderr
    assert b"removed a partial last line" in done.stderr
    assert out.read_bytes().startswith(kept)
    assert sorted(record["id"] for record in records(out)) == [f"p{i}" for i in range(5)]


# -- inputs read once -----------------------------------------------------------------------------------


def test_a_piped_input_is_read_once_with_progress_on(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = tinkex_batch("/dev/stdin", str(out), "--progress", stdin=prompt_lines(20))
    assert done.returncode == 0, done.stderr
    assert b"20 sampled" in done.stdout
    assert sorted(record["id"] for record in records(out)) == sorted(f"p{i}" for i in range(20))


def test_a_fifo_input_is_opened_once(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(prompt_lines(12),), daemon=True)
    writer.start()  # blocks in open() until the command opens the FIFO for reading
    out = tmp_path / "out.jsonl"
    try:
        done = tinkex_batch(str(fifo), str(out), "--progress")
        writer.join(timeout=5)
    finally:
        if writer.is_alive():  # the command never opened the FIFO: open it here so the writer ends
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    assert done.returncode == 0, done.stderr
    assert len(records(out)) == 12


# -- devices and FIFOs ----------------------------------------------------------------------------------


@pytest.fixture
def fifo_out(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "out.fifo"
    os.mkfifo(path)
    yield path


@pytest.mark.parametrize("kind", ["a character device", "a FIFO"])
def test_an_output_that_is_not_a_regular_file_is_refused(source: Path, fifo_out: Path, kind: str) -> None:
    out = "/dev/full" if kind == "a character device" else str(fifo_out)
    done = tinkex_batch(str(source), out)
    assert done.returncode == 1
    assert f"is {kind}, not a regular file".encode() in done.stderr


def test_an_input_device_is_refused(tmp_path: Path) -> None:
    done = tinkex_batch("/dev/zero", str(tmp_path / "out.jsonl"))
    assert done.returncode == 1 and b"is a device, not a file, a pipe or a terminal" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_an_oversized_input_line_becomes_an_error_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    huge = json.dumps({"id": "huge", "prompt": "y" * 5000}).encode()
    source.write_bytes(prompt_lines(2) + huge + b"\n" + b'{"id":"last","prompt":"ok"}\n' + b"z" * 3000)
    out = tmp_path / "out.jsonl"
    done = tinkex_batch(str(source), str(out), "--max-line-bytes", "1000")
    assert done.returncode == 3, done.stderr
    assert b"2 invalid input lines: error lines written" in done.stderr
    by_key = {(record["id"], record.get("line")): record for record in records(out)}
    assert {key for key, record in by_key.items() if "sequences" in record} == {("p0", None), ("p1", None),
                                                                              ("last", None)}
    for line in (3, 5):
        error = by_key[(None, line)]["error"]
        assert error["field"] == "line" and "longer than 1000 bytes" in error["message"]


def test_an_endless_piped_line_is_cut_at_the_cap(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    stream = prompt_lines(1) + b"q" * 3_000_000  # no newline: one 3 MB "line"
    done = tinkex_batch("/dev/stdin", str(out), "--max-line-bytes", "65536", stdin=stream)
    assert done.returncode == 3, done.stderr
    assert sorted(record.get("line") or 0 for record in records(out)) == [0, 2]  # p0, then line 2 cut off


# -- request size ----------------------------------------------------------------------------------------


@pytest.fixture
def small_server() -> Iterator[LocalServer]:
    with LocalServer(models=[ECHO], max_body_bytes=16384) as server:
        yield server


def _big_input(tmp_path: Path) -> Path:
    source = tmp_path / "in.jsonl"
    big = {"id": "big", "tokens": [123] * 8000}  # a request of ~33 kB
    source.write_bytes(prompt_lines(3) + json.dumps(big).encode() + b"\n")
    return source


def test_a_413_is_a_permanent_error_line_and_never_resent(small_server: LocalServer, tmp_path: Path) -> None:
    source, out = _big_input(tmp_path), tmp_path / "out.jsonl"
    env = {"TINKER_API_KEY": small_server.api_key}
    done = tinkex_batch(str(source), str(out), "--base-url", small_server.base_url, env=env, local=False)
    assert done.returncode == 3, done.stderr
    big = [record for record in records(out) if record["id"] == "big"]
    assert len(big) == 1 and big[0]["error"]["status_code"] == 413
    again = tinkex_batch(str(source), str(out), "--base-url", small_server.base_url, env=env, local=False)
    assert again.returncode == 0 and b"4 already done" in again.stdout
    assert small_server.stats()["statuses"].get("asample 413") == 1


def test_a_prompt_over_the_request_limit_is_refused_before_sending(small_server: LocalServer, tmp_path: Path) -> None:
    source, out = _big_input(tmp_path), tmp_path / "out.jsonl"
    done = tinkex_batch(str(source), str(out), "--base-url", small_server.base_url, "--max-request-bytes", "16384",
                        env={"TINKER_API_KEY": small_server.api_key}, local=False)
    assert done.returncode == 3, done.stderr
    big = [record for record in records(out) if record["id"] == "big"][0]["error"]
    assert big["type"] == "ValidationError" and big["field"] == "prompt" and "max_request_bytes" in big["message"]
    stats = small_server.stats()
    assert stats["requests"]["asample"] == 3 and "asample 413" not in stats["statuses"]
