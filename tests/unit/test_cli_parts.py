"""The ``tinkex`` command's pieces that need no server: number options, streamed text, one-line
error messages, ``--debug serve`` logging and a closed output pipe."""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
from typing import Iterator, List

import pytest

from tinkex import cli
from tinkex._cli import messages as cli_messages
from tinkex._cli import output as cli_output
from tinkex.errors import APIConnectionError, APIStatusError
from tinkex.tokenizers import get_tokenizer
from tinkex.types import SampleStreamChunk, StopReason, StreamChunkKind

BYTE = get_tokenizer("tinkex/byte")


@pytest.mark.parametrize("argv, complaint", [
    (["sample", "x", "--local", "--num-samples", "two"], "argument --num-samples: not a whole number: 'two'"),
    (["models", "--max-retries", "1.5"], "argument --max-retries: not a whole number: '1.5'"),
    (["sample", "x", "--local", "--timeout", "soon"], "argument --timeout: not a number: 'soon'"),
    (["logprobs", "x", "--local", "--timeout", "inf"], "argument --timeout: must be a positive number"),
])
def test_number_options_that_are_not_numbers_exit_2_naming_the_option(
    argv: List[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: tinkex {argv[0]} ") and complaint in err


def token(token_id: int, index: int) -> SampleStreamChunk:
    return SampleStreamChunk(kind=StreamChunkKind.TOKEN, token_id=token_id, index=index)


def test_streamed_text_holds_back_a_split_character_and_skips_chunks_without_a_token() -> None:
    chunks = [token(104, 0), token(0xC3, 1), SampleStreamChunk(kind=StreamChunkKind.TOKEN, index=2),
              token(0xA9, 3), SampleStreamChunk(kind=StreamChunkKind.DONE, finish_reason=StopReason.LENGTH,
                                                total_tokens=4)]
    written: List[str] = []

    class Out(io.StringIO):
        def write(self, text: str) -> int:
            written.append(text)
            return super().write(text)

    out = Out()
    # a plain iterator: nothing to close
    cli_output.stream_chunks(iter(chunks), BYTE, argparse.Namespace(json=False), out)
    assert out.getvalue() == "hé\n"
    assert written == ["h", "é", "\n"]  # the lone first byte of é printed nothing


def test_a_status_error_shows_the_request_id_and_no_hint_for_a_server_failure() -> None:
    error = APIStatusError("boom", status_code=503, body='{"detail": "overloaded"}', request_id="req-7")
    assert cli_messages.describe(error) == "overloaded (HTTP 503, request id: req-7)"  # the id once, no hint
    bare = APIStatusError("boom", status_code=502, request_id="req-8")
    assert cli_messages.describe(bare) == "the server answered HTTP 502 (HTTP 502, request id: req-8)"


def test_a_connection_error_that_is_not_a_refusal_is_shown_as_it_is() -> None:
    lookup = APIConnectionError("GET http://tinker.invalid/api/v1/healthz failed: name resolution failed",
                                url="http://tinker.invalid/api/v1/healthz")
    lookup.__cause__ = OSError(-2, "Name or service not known")
    assert cli_messages.describe(lookup) == str(lookup)  # no "start one with `tinkex serve`": something listens, or not
    refused = APIConnectionError("GET failed", url="http://127.0.0.1:9/api/v1/healthz")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    assert cli_messages.describe(refused).startswith("no server at http://127.0.0.1:9 — ")


@pytest.fixture
def tinkex_logger_level() -> Iterator[None]:
    logger = logging.getLogger("tinkex")
    level = logger.level
    yield
    logger.setLevel(level)


def test_debug_before_serve_turns_on_tinkex_debug_logging(capsys: pytest.CaptureFixture[str],
                                                          tinkex_logger_level: None) -> None:
    logging.getLogger("tinkex").setLevel(logging.WARNING)
    assert cli.main(["--debug", "serve", "--help"]) == 0
    assert "usage: tinkex serve" in capsys.readouterr().out
    assert logging.getLogger("tinkex").level == logging.DEBUG


def test_output_into_a_closed_pipe_stops_quietly_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `tinkex ... | head -0`: nobody reads
    out = os.fdopen(write_end, "w", buffering=1)
    try:
        assert cli.main(["version"], out=out) == 1
    finally:
        with contextlib.suppress(BrokenPipeError):
            out.close()
    assert capsys.readouterr() == ("", "")  # no traceback, no error line
