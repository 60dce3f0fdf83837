"""The lm-eval backend's pieces that need no server: the in-flight window, stop cuts, key hiding."""

from __future__ import annotations

import os

# datasets (imported with lm_eval) reads these once: whichever lm-eval test module comes first sets them.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import subprocess
import sys
import threading
from concurrent.futures import CancelledError, Future
from typing import Callable, List

import pytest

from tinkex.contrib._inflight import run_in_flight
from tinkex.contrib._lm_eval_cli import hide_api_key
from tinkex.contrib.lm_eval import cut_at_stop
from tinkex.errors import BadRequestError, DecodeError, ValidationError


class Window:
    """Hands out futures the test settles by hand, and records how many were pending at most."""

    def __init__(self) -> None:
        self.futures: List[Future] = []
        self.most_pending = 0

    def start(self, index: int) -> Callable[[], Future]:
        def go() -> Future:
            future: Future = Future()
            self.futures.append(future)
            pending = sum(1 for f in self.futures if not f.done())
            self.most_pending = max(self.most_pending, pending)
            # settle it from another thread, in reverse order within each pair, as a pool would
            threading.Timer(0.001 * (index % 2 == 0), future.set_result, (index,)).start()
            return future

        return go


def test_results_come_back_in_request_order_with_at_most_limit_pending() -> None:
    window = Window()
    progress = []
    results, failures = run_in_flight([window.start(i) for i in range(40)], 3, lambda i, r: r * 2,
                                      lambda: progress.append(1))
    assert results == [i * 2 for i in range(40)]
    assert failures == {}
    assert window.most_pending <= 3
    assert len(progress) == 40


def test_failures_are_kept_by_index_and_do_not_stop_the_rest() -> None:
    def start(index: int) -> Callable[[], Future]:
        def go() -> Future:
            if index == 1:
                raise ValidationError("bad prompt", field="prompt", value=index)
            future: Future = Future()
            if index == 2:
                future.set_exception(BadRequestError("too long", status_code=400))
            elif index == 3:
                future.cancel()
            else:
                future.set_result(index)
            return future

        return go

    results, failures = run_in_flight([start(i) for i in range(5)], 2, lambda i, r: r)
    assert results == [0, None, None, None, 4]
    assert sorted(failures) == [1, 2, 3]
    assert isinstance(failures[1], ValidationError)
    assert isinstance(failures[2], BadRequestError)
    assert isinstance(failures[3], CancelledError)


def test_requests_refused_before_sending_leave_nothing_to_wait_for() -> None:
    def refused() -> Future:
        raise ValidationError("client is closed", field="client")

    progress: List[int] = []
    results, failures = run_in_flight([refused, refused], 1, lambda i, r: r, lambda: progress.append(1))
    assert results == [None, None] and sorted(failures) == [0, 1] and len(progress) == 2


def test_an_answer_finish_cannot_use_is_a_failure_of_its_request() -> None:
    def answered(value: int) -> Callable[[], Future]:
        def go() -> Future:
            future: Future = Future()
            future.set_result(value)
            return future

        return go

    def finish(index: int, value: int) -> int:
        if value < 0:
            raise DecodeError(f"no logprobs in answer {index}")
        return value

    results, failures = run_in_flight([answered(1), answered(-1), answered(3)], 2, finish)
    assert results == [1, None, 3]
    assert list(failures) == [1] and str(failures[1]) == "no logprobs in answer 1"


def test_an_unexpected_error_cancels_what_is_pending() -> None:
    pending: List[Future] = []

    def start() -> Future:
        future: Future = Future()
        pending.append(future)
        return future

    def boom() -> Future:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_in_flight([start, start, boom], 3, lambda i, r: r)
    assert len(pending) == 2 and all(future.cancelled() for future in pending)


def test_cut_at_stop_cuts_at_the_earliest_stop_string() -> None:
    assert cut_at_stop("x = 1. y = 2\nz", ["\n", "."]) == "x = 1"
    assert cut_at_stop("no stop here", ["\n", ""]) == "no stop here"


def test_hide_api_key_moves_the_key_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", "placeholder")  # so the test's own change is undone afterwards
    argv = ["--model", "tinkex", "--model_args", "base_model=m,api_key=tml-secret", "--tasks", "t"]
    assert hide_api_key(argv) == ["--model", "tinkex", "--model_args", "base_model=m", "--tasks", "t"]
    assert os.environ["TINKER_API_KEY"] == "tml-secret"
    assert hide_api_key(["--model_args=api_key=tml-two", "--limit", "3"]) == ["--limit", "3"]
    assert hide_api_key(["-a", "api_key=tml-three", "seed=1", "--tasks", "t"]) == ["-a", "seed=1", "--tasks", "t"]
    assert hide_api_key(["--model_args", "api_key=tml-four", "--tasks", "t"]) == ["--tasks", "t"]
    assert os.environ["TINKER_API_KEY"] == "tml-four"


def test_the_model_is_registered_on_import_and_declared_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    from lm_eval.api.registry import get_model

    from tinkex.contrib.lm_eval import TinkexLM

    assert get_model("tinkex") is TinkexLM
    declared = {ep.name: ep for ep in entry_points(group="lm_eval.models")}
    assert declared["tinkex"].load() is TinkexLM  # what newer lm-eval releases discover


def test_tinkex_eval_help_is_lm_evals_help() -> None:
    done = subprocess.run([sys.executable, "-m", "tinkex", "eval", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lm-eval" in done.stdout and "run" in done.stdout
    listed = subprocess.run([sys.executable, "-m", "tinkex", "--help"], capture_output=True, text=True, timeout=60)
    assert "eval" in listed.stdout.split("COMMAND", 1)[1]
