"""``tinkex batch`` as a newcomer meets it: fails fast, stops cleanly, says what to do, leaves no process behind.

Every test runs the command as a subprocess against a real server (``--local`` or a
:class:`~tinkex.server.LocalServer` started here); none mocks anything.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Set

import pytest

from tinkex.server import LocalServer

ECHO = "tinkex/echo"
ROOT = Path(__file__).resolve().parents[2]
TINKEX = [sys.executable, "-m", "tinkex"]


def write_prompts(path: Path, count: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i}", "tokens": [65 + i % 26]}) + "\n" for i in range(count)))
    return path


def ids(path: Path) -> List[Any]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def slow_server() -> Iterator[LocalServer]:
    with LocalServer(models=[ECHO], token_delay_ms=5, max_concurrent_generations=8) as server:
        yield server


def wait_for_lines(path: Path, lines: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the batch finished before the test could act"
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {lines} lines")


# -- item 2: --max-retries -------------------------------------------------------------------------------


def test_an_unreachable_server_fails_in_seconds_with_max_retries(tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 3)
    command = [*TINKEX, "batch", str(source), str(tmp_path / "out.jsonl"), "--model", ECHO,
               "--base-url", f"http://127.0.0.1:{free_port()}", "--max-retries", "0"]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=40,
                          env={**os.environ, "TINKER_API_KEY": "tml-unreachable-test"})
    assert done.returncode == 1
    assert time.monotonic() - started < 15  # 56 s when --max-retries was ignored
    assert not (tmp_path / "out.jsonl").exists()


# -- item 7: exit codes and Ctrl-C ------------------------------------------------------------------------


def test_invalid_lines_exit_non_zero_and_say_how_many(tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 3)
    with source.open("a") as extra:
        extra.write('{"id": "x", "prompt": 5}\n{not json\n')
    out = tmp_path / "out.jsonl"
    command = [*TINKEX, "batch", str(source), str(out), "--local", "--model", ECHO, "--max-tokens", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "3 sampled, 0 failed, 2 invalid lines" in done.stdout
    assert "tinkex batch: 2 invalid input lines: error lines written to" in done.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "5 already done" in again.stdout


def test_ctrl_c_prints_the_command_that_resumes(slow_server: LocalServer, tmp_path: Path) -> None:
    count = 300
    source = write_prompts(tmp_path / "in put.jsonl", count)  # a space, to check the quoting
    out = tmp_path / "out.jsonl"
    arguments = ["batch", str(source), str(out), "--model", ECHO, "--base-url", slow_server.base_url,
                 "--max-tokens", "20", "--concurrency", "4", "--api-key", slow_server.api_key]
    process = subprocess.Popen([*TINKEX, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_lines(out, 10, process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert slow_server.api_key not in stderr  # the hint shows a placeholder for --api-key
    hint = shlex.split(stderr.split("Resume with the same command:\n", 1)[1].splitlines()[0])
    assert hint == ["tinkex", *arguments[:-1], "<API key>"]
    resumed = subprocess.run([*TINKEX, *hint[1:-1], slow_server.api_key], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(ids(out)) == sorted(f"p{i}" for i in range(count))


# -- item 8: the input format is documented where users look ----------------------------------------------


def test_batch_help_documents_the_line_formats_in_plain_text() -> None:
    done = subprocess.run([*TINKEX, "batch", "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    text = done.stdout
    for needle in ('{"id": "q1", "prompt":', '"tokens": [', "max_tokens, temperature, top_p, top_k, seed, stop,",
                   '"sequences": [{"text"', '"error": {"type"', "exit codes:", "--send-api-key", "(default: 100)",
                   "(default: 16777216)"):
        assert needle in text, needle
    for markup in ("``", ":class:", ":mod:", "tinkex._", "tinkex.batch._", "pydoc"):
        assert markup not in text, markup


def test_the_example_input_file_runs(tmp_path: Path) -> None:
    example = ROOT / "examples" / "batch_prompts.jsonl"
    out = tmp_path / "out.jsonl"
    done = subprocess.run([*TINKEX, "batch", str(example), str(out), "--local", "--model", ECHO, "--max-tokens", "4"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    records = {json.loads(line)["id"]: json.loads(line) for line in out.read_text().splitlines()}
    assert set(records) == {json.loads(line)["id"] for line in example.read_text().splitlines()}
    assert all("sequences" in record for record in records.values())
    readme = (ROOT / "README.md").read_text()
    assert "examples/batch_prompts.jsonl" in readme and example.read_text().splitlines()[0] in readme


# -- item 9: no orphaned workers -------------------------------------------------------------------------


def _children(pid: int) -> Set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is pending


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
def test_sigkill_of_the_command_leaves_no_worker_running(slow_server: LocalServer, tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    command = [*TINKEX, "batch", str(source), str(out), "--model", ECHO, "--base-url", slow_server.base_url,
               "--max-tokens", "20", "--processes", "2", "--chunk-size", "5"]
    process = subprocess.Popen(command, env={**os.environ, "TINKER_API_KEY": slow_server.api_key},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: Set[int] = set()
    try:
        wait_for_lines(out, 20, process)
        workers = _children(process.pid)
        assert len(workers) >= 2  # two pool workers (and the resource tracker)
        process.kill()
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the killed command"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in workers:  # started by the command this test started; only those, by id
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
