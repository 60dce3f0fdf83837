"""The batch pieces that need no server: input checks and parsing, the output file's guards,
progress reporters, output records, error classification and the command's resume hint."""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import pickle
import stat
import sys
import threading
from pathlib import Path

import pytest

from tinkex.batch import BatchItem, BatchWorkerError, _output, is_permanent
from tinkex.batch import cli as batch_cli
from tinkex.batch._input import BadLine, InputLine, check_input, count_lines, open_input, parse_line
from tinkex.batch._output import OutputFile
from tinkex.batch._pools import _chunk_failure, _picklable
from tinkex.batch._progress import LogProgress, TqdmProgress, make_progress
from tinkex.batch._records import Renderer
from tinkex.batch._sample import check_arguments
from tinkex.errors import RequestFailedError, TinkexError, ValidationError
from tinkex.types import SampledSequence, SampleResponse, SamplingParams

PARAMS = SamplingParams(max_tokens=4, seed=1)


# -- input -----------------------------------------------------------------------------------------


def test_a_directory_input_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as raised:
        check_input(str(tmp_path))
    assert raised.value.filename == str(tmp_path)


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


def test_a_block_device_input_is_refused_without_being_opened() -> None:
    devices = [path for path in sorted(glob.glob("/dev/*")) if _is_block_device(path)]
    if not devices:
        pytest.skip("no block device on this machine")
    with pytest.raises(ValidationError) as raised:
        check_input(devices[0])
    assert raised.value.field == "input_path" and "is a device" in str(raised.value)


def test_a_terminal_is_accepted_as_input_and_other_character_devices_are_not() -> None:
    controller, terminal = os.openpty()
    try:
        check_input(os.ttyname(terminal))  # a person typing prompts: allowed
    finally:
        os.close(controller)
        os.close(terminal)
    with pytest.raises(ValidationError) as checked:
        check_input(os.devnull)
    with pytest.raises(ValidationError) as opened, open_input(os.devnull):
        pass
    assert checked.value.field == opened.value.field == "input_path"


@pytest.mark.parametrize("content, lines", [(b"", 0), (b"a\nb\n", 2), (b"a\nb", 2), (b"\n\n\n", 3)])
def test_count_lines_counts_an_unterminated_last_line_and_rewinds(tmp_path: Path, content: bytes,
                                                                 lines: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"skip\n" + content)
    with open(path, "rb") as source:
        source.readline()
        assert count_lines(source) == lines
        assert source.read() == content  # back where it was


def test_count_lines_of_a_pipe_is_unknown() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as source, os.fdopen(write_end, "wb"):
        assert count_lines(source) is None


@pytest.mark.parametrize("data, field", [
    ({"id": 1, "tokens": [1, -2]}, "tokens"),
    ({"id": 1, "tokens": "12"}, "tokens"),
    ({"id": 1, "tokens": [1, True]}, "tokens"),
    ({"id": 1, "prompt": "x", "num_samples": 0}, "num_samples"),
    ({"id": 1, "prompt": "x", "num_samples": 2.0}, "num_samples"),
])
def test_bad_tokens_and_num_samples_name_the_field_and_keep_the_id(data: dict, field: str) -> None:
    entry = parse_line(7, json.dumps(data).encode(), PARAMS)
    assert isinstance(entry, BadLine) and entry.id == 1
    assert isinstance(entry.error, ValidationError) and entry.error.field == field
    assert str(entry.error).startswith("line 7: ")


def test_good_tokens_and_num_samples_make_an_item() -> None:
    entry = parse_line(1, b'{"id": "a", "tokens": [0, 5], "num_samples": 3}', PARAMS)
    assert isinstance(entry, InputLine)
    assert entry.item == BatchItem([0, 5], None, 3)


def test_a_batch_item_refuses_sampling_params_of_another_type() -> None:
    with pytest.raises(ValidationError) as raised:
        BatchItem([1], {"max_tokens": 3})  # type: ignore[arg-type]
    assert raised.value.field == "sampling_params" and "dict" in str(raised.value)


def test_check_arguments_refuses_sampling_params_of_another_type() -> None:
    with pytest.raises(ValidationError) as raised:
        check_arguments({"max_tokens": 3}, "record")
    assert raised.value.field == "sampling_params"


# -- output ----------------------------------------------------------------------------------------


def test_an_output_file_cannot_be_written_after_close_and_closes_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    output, done = OutputFile.open(str(path))
    output.write({"id": 1, "sequences": []})
    output.close()
    output.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        output.write({"id": 2, "sequences": []})
    assert path.read_bytes() == b'{"id":1,"sequences":[]}\n' and len(done) == 0


@pytest.mark.parametrize("content, why", [
    (b'{"id":1,"sequences":[]}\nnot ours', "the last line has no newline and is not a tinkex batch line"),
    (b'{"id":1,"sequences":[]}\n{"id":2, broken\n', "is not a tinkex batch output line"),
])
def test_a_file_that_only_starts_like_an_output_is_refused_and_kept(tmp_path: Path, content: bytes,
                                                                    why: str) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValidationError) as raised:
        OutputFile.open(str(path))
    assert "line 2: " in str(raised.value) and why in str(raised.value)
    assert raised.value.field == "output_path"
    assert path.read_bytes() == content


def test_an_output_line_over_the_cap_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_output, "MAX_OUTPUT_LINE_BYTES", 64)  # the real cap is 1 GiB
    path = tmp_path / "out.jsonl"
    content = b'{"id":1,"sequences":[]}\n{"id":2,"sequences":[' + b"1," * 40 + b"1]}\n"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match="line 2: longer than 64 bytes"):
        OutputFile.open(str(path))
    assert path.read_bytes() == content


def test_an_output_replaced_by_a_fifo_after_the_check_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.jsonl"
    checked = _output.check_output

    def check_then_replace(target: str) -> None:  # the race: another program swaps the path in between
        checked(target)
        os.mkfifo(target)

    monkeypatch.setattr(_output, "check_output", check_then_replace)
    with pytest.raises(ValidationError, match="is a FIFO, not a regular file"):
        OutputFile.open(str(path))  # neither blocks on the FIFO nor writes to it
    assert stat.S_ISFIFO(os.stat(path).st_mode)


# -- records and errors ----------------------------------------------------------------------------


def test_a_renderer_without_a_tokenizer_leaves_text_null() -> None:
    renderer = pickle.loads(pickle.dumps(Renderer(None)))
    record = renderer(SampleResponse(sequences=[SampledSequence(tokens=[104, 105])]))
    assert record["sequences"][0]["text"] is None and record["sequences"][0]["tokens"] == [104, 105]


def test_a_request_failure_is_permanent_only_when_it_is_the_users() -> None:
    assert is_permanent(RequestFailedError("bad stop", category="user"))
    assert not is_permanent(RequestFailedError("model crashed", category="server"))
    assert not is_permanent(RequestFailedError("?", category="unknown"))


def test_a_chunk_failure_names_what_went_wrong() -> None:
    short = _chunk_failure([1, 2], 3)
    assert str(short) == "a worker returned 2 outcomes for a chunk of 3 prompts" and short.__cause__ is None
    cause = OSError("worker died")
    crashed = _chunk_failure(cause, 4)
    assert isinstance(crashed, BatchWorkerError) and crashed.__cause__ is cause
    assert str(crashed) == "a chunk of 4 prompts failed in its worker: OSError: worker died"


class _HoldsALock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()  # cannot be pickled back to the parent


def test_an_outcome_that_cannot_be_pickled_is_replaced_by_its_description() -> None:
    replaced = _picklable(_HoldsALock("postprocess failed"))
    assert type(replaced) is TinkexError and str(replaced) == "_HoldsALock: postprocess failed"
    kept = ValueError("fine")
    assert _picklable(kept) is kept
    assert _picklable({"sequences": []}) == {"sequences": []}


# -- progress --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_progress_logs_at_most_once_per_interval_with_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.batch")
    clock = Clock()
    progress = LogProgress(total=10, interval=5.0, clock=clock)
    clock.now += 1
    progress.update(failed=False)  # within the interval: quiet
    clock.now += 4
    progress.update(failed=True)
    clock.now += 1
    progress.update(failed=False)
    assert [r.getMessage() for r in caplog.records] == ["batch: 2/10 done, 1 failed, 0.4/s, ETA 20s"]


def test_log_progress_without_a_total_has_no_eta_and_an_idle_one_says_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.batch")
    clock = Clock()
    LogProgress(total=None, clock=clock).close()  # nothing done: no line
    progress = LogProgress(total=None, clock=clock)
    clock.now += 2
    progress.update(failed=False)
    progress.close()
    assert [r.getMessage() for r in caplog.records] == ["batch: 1 done, 0 failed, 0.5/s (finished)"]


def test_without_tqdm_a_bar_falls_back_to_log_lines(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.batch")
    assert isinstance(make_progress("bar", 3), TqdmProgress)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the progress extra were not installed
    progress = make_progress("bar", 3)
    assert isinstance(progress, LogProgress)
    assert "tqdm is not installed" in caplog.records[-1].getMessage()


# -- the command's helpers -------------------------------------------------------------------------


def test_the_resume_hint_repeats_the_command_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m tinkex", "batch", "in.jsonl", "out file.jsonl",
                                      "--api-key=tml-secret", "--api-key", "tml-other", "--local"])
    hint = batch_cli._same_command()
    assert hint == "tinkex batch in.jsonl 'out file.jsonl' '--api-key=<API key>' --api-key '<API key>' --local"
    monkeypatch.setattr(sys, "argv", ["pytest", "tests"])  # run_batch called from Python, not a shell
    assert batch_cli._same_command() == "the same tinkex batch command"


@pytest.mark.parametrize("text, complaint", [("x", "not an integer: 'x'"), ("0", "must be a positive integer")])
def test_batch_counts_must_be_positive_integers(text: str, complaint: str, capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path) -> None:
    from tinkex import cli

    code = cli.main(["batch", str(tmp_path / "in"), str(tmp_path / "out"), "--concurrency", text],
                    out=io.StringIO())
    assert code == 2 and complaint in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
