"""The ``tinkex`` command against real local servers: output, JSON, streaming, errors, exit codes, Ctrl-C."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from tinkex import cli
from tinkex._cli import messages as cli_messages
from tinkex._config import __version__
from tinkex.errors import RequestFailedError
from tinkex.server import LocalServer
from tinkex.tokenizers import get_tokenizer

BYTE = get_tokenizer("tinkex/byte")


def run(*argv: str) -> Tuple[int, str]:
    """Run the command in-process; returns (exit code, stdout)."""
    out = io.StringIO()
    code = cli.main(list(argv), out=out)
    return code, out.getvalue()


def json_lines(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def remote(local_server: LocalServer, monkeypatch: pytest.MonkeyPatch) -> LocalServer:
    """The shared server, reached the way a real deployment is: TINKER_BASE_URL and TINKER_API_KEY."""
    monkeypatch.setenv("TINKER_BASE_URL", local_server.base_url)
    monkeypatch.setenv("TINKER_API_KEY", local_server.api_key)
    return local_server


def subprocess_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)  # already stripped of TINKER_* by the autouse fixture
    env.update(extra)
    return env


# ---------------------------------------------------------------- results


def test_version() -> None:
    code, text = run("version")
    assert code == 0 and text.startswith(f"tinkex {__version__} (") and "0.38.0" in text
    code, text = run("version", "--json")
    assert json.loads(text)["tinkex"] == __version__


def test_version_flag_prints_what_the_version_command_prints() -> None:
    done = tinkex_process("--version")
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == run("version")[1]


def test_local_sample_is_a_one_liner_and_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    first = run("sample", "The Python", "--local", "--max-tokens", "30", "--seed", "5")
    second = run("sample", "The Python", "--local", "--max-tokens", "30", "--seed", "5")
    assert first[0] == 0 and first == second
    assert len(first[1]) > 10 and first[1].endswith("\n")
    assert capsys.readouterr().err == ""  # nothing but the text


def test_sample_json_through_the_environment(remote: LocalServer) -> None:
    code, text = run("sample", "Hello", "--model", "tinkex/echo", "--max-tokens", "8", "--num-samples", "2", "--json")
    assert code == 0
    [record] = json_lines(text)
    assert record["model"] == "tinkex/echo" and record["prompt"] == "Hello"
    first, second = record["sequences"]
    assert first["text"] == "HelloHel" and first["tokens"] == list(b"HelloHel")
    assert first["stop_reason"] == "length" and len(first["logprobs"]) == 8
    assert second["text"] == BYTE.decode(second["tokens"])


def test_sample_text_with_several_samples_and_stop(remote: LocalServer) -> None:
    code, text = run("sample", "ab", "--model", "tinkex/echo", "--base-url", remote.base_url, "--max-tokens", "9",
                     "--num-samples", "2", "--stop", "ba")
    assert code == 0
    assert text.splitlines() == [
        "--- sample 1/2 (stop: stop) ---", "aba", "--- sample 2/2 (stop: length) ---", "bcbcbcbcb",
    ]


def test_stream_text_equals_the_sampled_text(remote: LocalServer) -> None:
    args = ("sample", "Lists are", "--model", "tinkex/ngram-small", "--max-tokens", "60", "--seed", "11",
            "--temperature", "0.8")
    assert run(*args, "--stream") == run(*args)


def test_stream_json_is_one_object_per_chunk(remote: LocalServer) -> None:
    code, text = run("sample", "añ", "--model", "tinkex/echo", "--max-tokens", "6", "--num-samples", "2",
                     "--stream", "--json")
    assert code == 0
    records = json_lines(text)
    for index in (0, 1):
        tokens = [r for r in records if r["type"] == "token" and r["sequence_index"] == index]
        [done] = [r for r in records if r["type"] == "done" and r["sequence_index"] == index]
        assert [r["index"] for r in tokens] == list(range(6)) and done["total_tokens"] == 6
        assert "".join(r["text"] for r in tokens) == done["text"] == BYTE.decode(r["token_id"] for r in tokens)
        assert done["finish_reason"] == "length"
    assert records[-1]["type"] == "done"
    assert json_lines(text)[0]["text"] == "a"  # the echo model repeats the prompt: 'ñ' arrives whole, later


def test_logprobs_text_and_json(remote: LocalServer) -> None:
    code, text = run("logprobs", "hé!", "--model", "tinkex/ngram-small", "--json")
    [record] = json_lines(text)
    assert code == 0 and record["tokens"] == list("hé!".encode())
    assert record["logprobs"][0] is None and all(value < 0 for value in record["logprobs"][1:])
    assert record["total"] == pytest.approx(sum(record["logprobs"][1:]))
    code, table = run("logprobs", "hé!", "--model", "tinkex/ngram-small")
    lines = table.splitlines()
    assert code == 0 and len(lines) == 1 + 4 + 1
    assert lines[1].split()[-1] == "-" and lines[-1].startswith(f"total {record['total']:.4f} over 3 scored")


def test_a_tinker_path_names_the_model_as_its_base_name_does(remote: LocalServer) -> None:
    by_path = run("logprobs", "import os", "--model", "tinker://tinkex/ngram-small", "--json")
    by_name = run("logprobs", "import os", "--model", "tinkex/ngram-small", "--json")
    assert by_path[0] == by_name[0] == 0
    path_record, name_record = json_lines(by_path[1])[0], json_lines(by_name[1])[0]
    assert path_record["model"] == "tinker://tinkex/ngram-small"
    assert path_record["logprobs"] == pytest.approx(name_record["logprobs"])


def test_models_text_and_json(remote: LocalServer) -> None:
    code, text = run("models")
    assert code == 0 and [line.split()[0] for line in text.splitlines()] == ["tinkex/ngram-small", "tinkex/echo"]
    code, text = run("models", "--json")
    assert [m["model_name"] for m in json.loads(text)["supported_models"]] == ["tinkex/ngram-small", "tinkex/echo"]


def test_local_models_loads_every_local_model() -> None:
    code, text = run("models", "--local")
    assert code == 0 and "tinkex/echo" in text and "tinkex/ngram-small" in text


# ---------------------------------------------------------------- usage and errors


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["sample"],
        ["sample", "x"],  # no --model and no --local
        ["sample", "x", "--local", "--timeout", "0"],
        ["sample", "x", "--local", "--max-tokens", "many"],
        ["sample", "x", "--local", "--stream", "--num-samples", "2"],
        ["frobnicate"],
    ],
)
def test_bad_usage_exits_2(argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(*argv)[0] == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["sample", "x", "--local", "--temperature", "-1"], "argument --temperature: temperature must be"),
        (["sample", "x", "--local", "--top-p", "2"], "argument --top-p: "),
        (["sample", "x", "--local", "--max-tokens", "-1"], "argument --max-tokens: max_tokens must be"),
        (["sample", "x", "--local", "--top-k", "0"], "argument --top-k: top_k must be"),
        (["sample", "x", "--local", "--num-samples", "0"], "argument --num-samples: must be at least 1"),
        (["sample", "x", "--local", "--max-retries", "-1"], "argument --max-retries: must be 0 or more"),
        (["sample", "x", "--local", "--stream", "--num-samples", "2"], "--stream prints one sequence as text"),
        (["sample", "x"], "--model is required"),
        (["logprobs", "x", "--local", "--timeout", "0"], "argument --timeout: must be a positive number"),
    ],
)
def test_invalid_values_exit_2_with_the_subcommand_usage(argv: List[str], complaint: str) -> None:
    done = tinkex_process(*argv)
    assert done.returncode == 2, done.stderr
    usage, *_, last = done.stderr.strip().splitlines()
    assert usage.startswith(f"usage: tinkex {argv[0]} ")
    assert last.startswith(f"tinkex {argv[0]}: error: ") and complaint in last, last


@pytest.mark.parametrize("command, shown", [
    ([], ["--debug", "--version"]),
    (["sample"], ["tokens per sample (default: 100)", "(default: 1.0)", "(default: -1)", "(default: 3)"]),
    (["logprobs"], ["(default: 3)", "(default: $TINKER_API_KEY"]),
    (["models"], ["(default: 3)", "(default: $TINKER_BASE_URL"]),
    (["serve"], ["(default: 8000)", "(default: 127.0.0.1)", "(default: 10.0)", "(default: 4)"]),
])
def test_every_help_shows_the_defaults(command: List[str], shown: List[str]) -> None:
    done = tinkex_process(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # undo argparse's line wrapping
    for expected in shown:
        assert expected in text, (expected, done.stdout)
    assert "(default: None)" not in text and "(default: False)" not in text


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help")[0] == 0
    listed = capsys.readouterr().out
    for command in ("serve", "sample", "logprobs", "models", "version", "batch"):
        assert command in listed


def last_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_missing_key_is_one_line_naming_the_remedies(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sample", "x", "--model", "acme/model")[0] == 1
    line = last_error_line(capsys)
    assert line == "error: no API key: set TINKER_API_KEY or pass --api-key (or pass --local to use a local server)"


def test_a_malformed_key_is_explained_in_the_commands_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("models", "--api-key", "sk-123", "--base-url", "http://127.0.0.1:9")[0] == 1
    line = last_error_line(capsys)
    assert "The API key must start with the 'tml-' prefix" in line and "pass --api-key" in line
    assert "api_key" not in line and "sk-123" not in line


def test_a_refused_key_shows_the_servers_words_and_what_to_check(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(api_keys=["tml-the-right-key"])
    done = tinkex_process("sample", "x", "--model", "tinkex/echo", "--base-url", server.base_url,
                          env=subprocess_env(TINKER_API_KEY="tml-a-wrong-key"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: invalid API key (HTTP 401) — check TINKER_API_KEY or --api-key (or pass --local to use a local server)"
    ]
    ok = tinkex_process("sample", "ok", "--model", "tinkex/echo", "--max-tokens", "2", "--base-url", server.base_url,
                        "--api-key", "tml-the-right-key")
    assert ok.returncode == 0 and ok.stdout == "ok\n", ok.stderr


def test_an_unknown_model_points_at_tinkex_models(remote: LocalServer) -> None:
    done = tinkex_process("sample", "x", "--model", "acme/nope", env=subprocess_env(
        TINKER_API_KEY=remote.api_key, TINKER_BASE_URL=remote.base_url))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: unknown base_model 'acme/nope'"), line
    assert line.endswith("(HTTP 400) — `tinkex models` lists the models this server offers"), line
    assert "Error code" not in line and "{" not in line


def test_no_server_at_the_url_says_how_to_start_one() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, then released
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = tinkex_process("sample", "x", "--model", "m", "--base-url", f"http://127.0.0.1:{port}",
                          "--max-retries", "0", env=subprocess_env(TINKER_API_KEY="tml-unused"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: no server at http://127.0.0.1:{port} — start one with `tinkex serve` or pass --local"
    ]


def test_unknown_local_model_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sample", "x", "--local", "--model", "acme/nope")[0] == 1
    assert "unknown model 'acme/nope'" in last_error_line(capsys)


def test_missing_tokenizer_is_one_line(remote: LocalServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("sample", "x", "--model", "tinkex/echo", "--tokenizer", "acme/unknown-tokenizer")[0] == 1
    line = last_error_line(capsys)
    assert "no tokenizer found for model 'acme/unknown-tokenizer'" in line and "register_tokenizer" in line


def test_a_missing_tokenizer_file_says_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "tokenizer.json"
    done = tinkex_process("sample", "x", "--local", "--model", "tinkex/echo", "--tokenizer", str(missing))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"error: tokenizer file not found: {str(missing)!r}"]


def test_server_rejection_is_one_line(remote: LocalServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer_json = tmp_path / "tokenizer.json"
    big_vocabulary(tokenizer_json)  # its ids go past the echo model's 258
    assert run("sample", "zz", "--model", "tinkex/echo", "--tokenizer", str(tokenizer_json))[0] == 1
    line = last_error_line(capsys)
    assert line.startswith("error: ") and "vocabulary" in line and line.endswith("(HTTP 400)")


def big_vocabulary(path: Path) -> None:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"zz": 1000, "[UNK]": 999}, unk_token="[UNK]")).save(str(path))


def test_unreachable_server_fails_fast(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "tml-unused")
    started = time.monotonic()
    assert run("models", "--base-url", "http://127.0.0.1:9", "--max-retries", "0")[0] == 1
    assert time.monotonic() - started < 30
    assert "127.0.0.1:9" in last_error_line(capsys)


def test_errors_carry_the_request_id() -> None:
    error = RequestFailedError("Request failed: out of\nmemory", request_id="req-42", category="server")
    assert cli_messages.describe(error) == "Request failed: out of memory (request id: req-42)"


def test_debug_prints_the_traceback() -> None:
    done = subprocess.run([sys.executable, "-m", "tinkex", "--debug", "sample", "x", "--model", "m"],
                          capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and done.stderr.rstrip().splitlines()[-1].startswith(
        "error: "
    )


def test_debug_logs_tinkex_lines_and_no_urllib3_noise() -> None:
    done = tinkex_process("--debug", "sample", "hi", "--local", "--model", "tinkex/echo", "--max-tokens", "2")
    assert done.returncode == 0, done.stderr
    assert "urllib3" not in done.stderr
    logged = done.stderr  # "<time> LEVEL tinkex.<module>: message" lines
    session = r" INFO tinkex\.[\w.]+: Session sess-\S+ created on http://127\.0\.0\.1:\d+$"
    assert re.search(session, logged, re.M), logged
    assert re.search(r" INFO tinkex\.[\w.]+: Sampling session \S+ ready for model tinkex/echo$", logged, re.M), logged
    calls = re.findall(r" DEBUG tinkex\.[\w.]+: POST asample: 200 in [\d.]+ ms \(request id (\S+)\)$", logged, re.M)
    assert len(calls) == 1 and calls[0].startswith("req-"), logged


def test_tinker_log_info_shows_the_session_and_model_but_no_requests() -> None:
    done = tinkex_process("sample", "hi", "--local", "--model", "tinkex/echo", "--max-tokens", "2",
                          env=subprocess_env(TINKER_LOG="info"))
    assert done.returncode == 0, done.stderr
    assert re.search(r" INFO tinkex\.[\w.]+: Session sess-", done.stderr), done.stderr
    assert "ready for model tinkex/echo" in done.stderr
    assert " DEBUG " not in done.stderr and "urllib3" not in done.stderr


def tinkex_process(*argv: str, env: Any = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tinkex ARGV`` to completion."""
    return subprocess.run([sys.executable, "-m", "tinkex", *argv], capture_output=True, text=True,
                          env=env or subprocess_env(), timeout=90)


def test_stdout_closed_by_the_reader_ends_the_command_quietly(remote: LocalServer) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # `tinkex models | head -0`: the reader is gone before anything is written
    try:
        done = subprocess.run([sys.executable, "-m", "tinkex", "models"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, env=subprocess_env(), timeout=90)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (1, "")  # no BrokenPipeError traceback, not even at exit


MISSING_EXTRAS = """
import contextlib, io, json, sys


class NotInstalled:  # as if no extra were installed: these packages are not found
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("aiohttp", "lm_eval", "distributed"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, NotInstalled())
from tinkex.cli import main
lines = []
for argv in sys.argv[1:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(json.loads(argv), out=io.StringIO())
    lines.append([code, err.getvalue().strip()])
print(json.dumps(lines))
"""


def test_a_missing_extra_is_one_line_naming_what_to_install(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1, "prompt": "x"}\n')
    commands = [["sample", "x", "--local"], ["serve", "--port", "0"], ["eval", "--tasks", "t"],
                ["batch", str(source), str(tmp_path / "out.jsonl"), "--model", "m", "--base-url", "http://127.0.0.1:9",
                 "--dask-scheduler", "tcp://127.0.0.1:9"]]
    done = subprocess.run([sys.executable, "-c", MISSING_EXTRAS, *map(json.dumps, commands)], capture_output=True,
                          text=True, env=subprocess_env(TINKER_API_KEY="tml-unused"), timeout=90)
    assert done.returncode == 0, done.stderr
    (sample, serve, evaluate, batch) = json.loads(done.stdout)
    assert sample == [1, "error: --local needs the server extra (aiohttp is missing): pip install 'tinkex[server]'"]
    assert serve == [1, "error: tinkex serve needs the server extra (aiohttp is missing): pip install 'tinkex[server]'"]
    assert evaluate == [1, "error: tinkex eval needs the lm-eval extra (lm_eval is missing): "
                           "pip install 'tinkex[lm-eval]'"]
    assert batch == [1, "error: --dask-scheduler needs the dask extra (distributed is missing): "
                        "pip install 'tinkex[dask]'"]
    assert not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- processes: Ctrl-C and serve


def wait_for(condition: Callable[[], bool], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "sample"])
def test_ctrl_c_stops_the_generation_and_exits_130(fresh_server: Callable[..., LocalServer], stream: bool) -> None:
    server = fresh_server(models=("tinkex/ngram-small",), token_delay_ms=20)  # 3000 tokens would take a minute
    command = [sys.executable, "-m", "tinkex", "sample", "Hello", "--model", "tinkex/ngram-small",
               "--max-tokens", "3000", "--base-url", server.base_url] + (["--stream"] if stream else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=subprocess_env(TINKER_API_KEY=server.api_key))
    try:
        assert process.stdout is not None
        if stream:
            assert process.stdout.read(1)  # text is arriving
        assert wait_for(lambda: server.stats()["running"] == 1)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and err.decode().strip().splitlines()[-1] == "interrupted"
    assert wait_for(lambda: server.stats()["running"] == 0)  # the server stopped generating
    assert wait_for(lambda: server.stats()["sessions_finished"] == 1)
    assert server.stats()["generations_total"] == 1


def test_serve_runs_the_local_server_until_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    process = subprocess.Popen([sys.executable, "-m", "tinkex", "serve", "--port", "0", "--model", "tinkex/echo"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("tinkex server on http://127.0.0.1:"), banner
        base_url = banner.split()[3]
        out = io.StringIO()
        monkeypatch.setenv("TINKER_API_KEY", "tml-local")
        assert cli.main(["sample", "ok", "--model", "tinkex/echo", "--max-tokens", "4", "--base-url", base_url],
                        out=out) == 0
        assert out.getvalue() == "okok\n"
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0


def test_serve_usage_errors_come_from_the_server_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--port", "not-a-port"]) == 2
    assert "tinkex serve" in capsys.readouterr().err
