"""``tinkex batch`` and ``run_batch`` against the local server: formats, bad lines, resume, kills, workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

import pytest

import tinkex
from tinkex import types
from tinkex.batch import BatchAbortedError, run_batch
from tinkex.cli import main
from tinkex.server import LocalServer
from tinkex.server.models import ECHO_MODEL


def write_lines(path: Path, records: Iterable[Any]) -> Path:
    with path.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(record if isinstance(record, str) else json.dumps(record))
            out.write("\n")
    return path


def read_output(path: Path) -> List[Dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def ids_of(records: List[Dict[str, Any]]) -> List[Any]:
    return [record["id"] for record in records if record["id"] is not None]


def prompts(count: int, **extra: Any) -> List[Dict[str, Any]]:
    return [{"id": f"p{i}", "tokens": [i % 256], **extra} for i in range(count)]


def batch(server: LocalServer, *args: str) -> List[str]:
    return ["batch", *args, "--model", ECHO_MODEL, "--base-url", server.base_url]


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, local_server: LocalServer) -> LocalServer:
    monkeypatch.setenv("TINKER_API_KEY", local_server.api_key)
    return local_server


def test_every_line_gets_one_output_line(keyed: LocalServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.jsonl", [
        {"id": 1, "prompt": "hé"},
        {"id": "two", "tokens": [65, 66], "max_tokens": 3, "num_samples": 2, "seed": 1},
        {"id": "one", "tokens": [300]},
        "",
        "{not json",
        {"id": 1, "prompt": "again"},
        {"prompt": "no id"},
        {"id": [1], "prompt": "odd id"},
        {"id": "both", "prompt": "a", "tokens": [1]},
        {"id": "t", "prompt": "a", "temperature": "hot"},
        [1, 2],
    ])
    out = tmp_path / "out.jsonl"
    assert main(batch(keyed, str(source), str(out), "--max-tokens", "4", "--seed", "0")) == 3  # error lines
    records = {(r["id"], r.get("line")): r for r in read_output(out)}
    assert len(records) == 10
    assert records[(1, None)]["sequences"] == [{"text": "héh", "tokens": [104, 195, 169, 104],
                                                "logprobs": [pytest.approx(-5.55296, abs=1e-4)] * 4,
                                                "stop_reason": "length"}]
    two = records[("two", None)]["sequences"]
    assert [s["text"] for s in two] == ["BCB", "CDC"]
    assert records[("one", None)]["error"]["type"] == "BadRequestError"
    assert records[("one", None)]["error"]["status_code"] == 400
    bad = {r["line"]: r["error"] for r in records.values() if "line" in r}
    assert bad[5]["type"] == "DecodeError" and "line 5" in bad[5]["message"]
    assert bad[6]["field"] == "id" and "duplicate" in bad[6]["message"]
    assert bad[7]["field"] == "id" and "missing" in bad[7]["message"]
    assert bad[8]["field"] == "id"
    assert bad[9]["field"] == "prompt" and records[("both", 9)]
    assert bad[10]["field"] == "temperature" and records[("t", 10)]
    assert "expected a JSON object" in bad[11]["message"]
    captured = capsys.readouterr()
    assert "2 sampled, 1 failed, 7 invalid lines, 0 already done" in captured.out
    assert "7 invalid input lines and 1 failed prompt: error lines written to" in captured.err
    assert "(first: DecodeError: line 5: invalid JSON" in captured.err


def test_a_rerun_skips_what_is_done(keyed: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(30) + ["oops"])
    out = tmp_path / "out.jsonl"
    assert main(batch(keyed, str(source), str(out), "--json")) == 3  # "oops" is an error line
    first = out.read_bytes()
    assert main(batch(keyed, str(source), str(out), "--json")) == 0  # nothing left to do
    assert out.read_bytes() == first
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert reports[0]["sampled"] == 30 and reports[0]["invalid"] == 1
    assert reports[1] == {**reports[1], "already_done": 31, "sampled": 0, "invalid": 0}


def test_a_torn_last_line_is_cut_and_its_prompt_redone(keyed: LocalServer, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(20))
    out = tmp_path / "out.jsonl"
    assert main(batch(keyed, str(source), str(out))) == 0
    whole = out.read_text().splitlines(keepends=True)
    out.write_text("".join(whole[:12]) + whole[12][: len(whole[12]) // 2])  # a crash mid-write
    assert main(batch(keyed, str(source), str(out))) == 0
    records = read_output(out)
    assert sorted(ids_of(records)) == sorted(f"p{i}" for i in range(20))


def test_sigkill_mid_run_then_rerun_writes_every_id_exactly_once(fresh_server: Callable[..., LocalServer],
                                                                 tmp_path: Path) -> None:
    server = fresh_server(token_delay_ms=3, max_concurrent_generations=8)
    count = 400
    source = write_lines(tmp_path / "in.jsonl", prompts(count))
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "tinkex", *batch(server, str(source), str(out), "--max-tokens", "8",
                                                      "--concurrency", "4")]
    env = {**os.environ, "TINKER_API_KEY": server.api_key}
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_lines(out, 40, worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        worker.stderr.close()  # type: ignore[union-attr]
    killed_at = out.read_bytes().count(b"\n")
    assert 40 <= killed_at < count
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "already done" in finished.stdout
    records = read_output(out)
    assert sorted(ids_of(records)) == sorted(f"p{i}" for i in range(count))
    assert all("sequences" in record for record in records)


def _wait_for_lines(path: Path, lines: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the batch finished before it could be killed"
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never reached {lines} lines")


def test_transient_failures_are_left_for_the_rerun(fresh_server: Callable[..., LocalServer], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    server = fresh_server(token_delay_ms=50, max_concurrent_generations=16)
    monkeypatch.setenv("TINKER_API_KEY", server.api_key)
    fast = prompts(6, max_tokens=1)
    slow = [{"id": f"slow{i}", "tokens": [i], "max_tokens": 40} for i in range(3)]  # 2 s each: past the deadline
    source = write_lines(tmp_path / "in.jsonl", fast + slow)
    out = tmp_path / "out.jsonl"
    assert main(batch(server, str(source), str(out), "--timeout", "1")) == 1
    assert sorted(ids_of(read_output(out))) == sorted(f"p{i}" for i in range(6))
    assert "3 prompts failed transiently" in capsys.readouterr().err
    server.stop()
    server.start()  # forget the slow generations, then finish the job
    assert main(batch(server, str(source), str(out), "--max-tokens", "1")) == 0
    records = read_output(out)
    assert sorted(ids_of(records)) == sorted([f"p{i}" for i in range(6)] + [f"slow{i}" for i in range(3)])


def test_a_streak_of_transient_failures_aborts_the_run(fresh_server: Callable[..., LocalServer],
                                                       tmp_path: Path) -> None:
    server = fresh_server(token_delay_ms=50, max_concurrent_generations=16)
    source = write_lines(tmp_path / "in.jsonl", prompts(50, max_tokens=40))
    out = tmp_path / "out.jsonl"
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as svc:
        client = svc.create_sampling_client(base_model=ECHO_MODEL)
        with pytest.raises(BatchAbortedError) as aborted:
            run_batch(client, str(source), str(out), types.SamplingParams(), timeout=0.2, abort_after=3,
                      max_in_flight=4)
    assert aborted.value.deferred == 3 and "Re-run" in str(aborted.value)
    assert out.read_text() == ""


def test_processes_share_the_work(keyed: LocalServer, tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", prompts(120) + [{"id": "bad", "tokens": [999]}])
    out = tmp_path / "out.jsonl"
    assert main(batch(keyed, str(source), str(out), "--processes", "2", "--chunk-size", "10")) == 3  # "bad"
    records = read_output(out)
    assert sorted(ids_of(records)) == sorted([f"p{i}" for i in range(120)] + ["bad"])
    by_id = {record["id"]: record for record in records}
    assert by_id["p7"]["sequences"][0]["tokens"][0] == 7
    assert by_id["bad"]["error"]["type"] == "BadRequestError"


def test_dask_scheduler(local_server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    distributed = pytest.importorskip("distributed")
    monkeypatch.setenv("TINKER_API_KEY", local_server.api_key)
    source = write_lines(tmp_path / "in.jsonl", prompts(100))
    out = tmp_path / "out.jsonl"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  worker_dashboard_address=None) as cluster:
        code = main(batch(local_server, str(source), str(out), "--dask-scheduler", cluster.scheduler_address,
                          "--send-api-key", "--chunk-size", "10"))
    assert code == 0
    assert sorted(ids_of(read_output(out))) == sorted(f"p{i}" for i in range(100))


def test_dask_workers_without_a_key_get_one_line_naming_send_api_key(tmp_path: Path) -> None:
    # Issue 14 item 10. Here rather than in tests/reliability: importing distributed in the test process
    # installs tblib's exception pickling, which test_secrets must not run under.
    distributed = pytest.importorskip("distributed")
    assert "TINKER_API_KEY" not in os.environ  # so the workers spawned below have none
    source = write_lines(tmp_path / "in.jsonl", prompts(400))
    with LocalServer(models=[ECHO_MODEL]) as server, distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
            worker_dashboard_address=None) as cluster:
        command = [sys.executable, "-m", "tinkex", "batch", str(source), str(tmp_path / "out.jsonl"), "--model",
                   ECHO_MODEL, "--base-url", server.base_url, "--dask-scheduler", cluster.scheduler_address,
                   "--chunk-size", "2"]
        done = subprocess.run(command, env={**os.environ, "TINKER_API_KEY": server.api_key}, capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the Dask workers have no API key"), done.stderr
    assert "--send-api-key" in lines[0]
    assert server.api_key not in done.stderr


def test_local_server_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"id": 1, "prompt": "Hi"}])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(source), str(out), "--model", ECHO_MODEL, "--local", "--max-tokens", "2"]) == 0
    assert read_output(out)[0]["sequences"][0]["text"] == "Hi"
    assert main(["batch", str(source), str(out), "--processes", "2", "--dask-scheduler", "x", "--local"]) == 2
    assert main(["batch", str(source), str(out)]) == 2
    assert main(["batch", str(source), str(out), "--local", "--concurrency", "0"]) == 2
    assert main(["batch", str(tmp_path / "missing.jsonl"), str(out), "--local", "--model", ECHO_MODEL]) == 1
    err = capsys.readouterr().err
    assert "not both" in err and "--model is required" in err and "missing.jsonl" in err


def test_ctrl_c_with_worker_processes_stops_quickly_and_resumes(fresh_server: Callable[..., LocalServer],
                                                                tmp_path: Path) -> None:
    server = fresh_server(token_delay_ms=5, max_concurrent_generations=32)
    count = 400
    source = write_lines(tmp_path / "in.jsonl", prompts(count))
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "tinkex", *batch(server, str(source), str(out), "--max-tokens", "20",
                                                      "--processes", "2", "--chunk-size", "10")]
    env = {**os.environ, "TINKER_API_KEY": server.api_key}
    worker = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(out, 20, worker)
        worker.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        _, stderr = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130 and "interrupted" in stderr
    assert time.monotonic() - interrupted < 10
    assert out.read_bytes().count(b"\n") < count
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert sorted(ids_of(read_output(out))) == sorted(f"p{i}" for i in range(count))


def test_one_run_at_a_time_per_output_and_never_into_the_input(keyed: LocalServer, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tinkex.batch._output import OutputFile

    source = write_lines(tmp_path / "in.jsonl", prompts(3))
    out = tmp_path / "out.jsonl"
    holder, _ = OutputFile.open(str(out))
    try:
        assert main(batch(keyed, str(source), str(out))) == 1
    finally:
        holder.close()
    assert main(batch(keyed, str(source), str(source))) == 1
    err = capsys.readouterr().err
    assert "being written by another run" in err and "the output file is the input file" in err
    assert out.read_text() == "" and len(source.read_text().splitlines()) == 3
