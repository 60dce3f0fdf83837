"""``tinkex.batch.sample_many`` against the local server: order, laziness, errors, process pools, Dask."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import tinkex
from tests.fake_tinker import KEY, FakeTinker, json_answer, result_answer
from tinkex import types
from tinkex._sampling.target import CLONE_SEQ_STRIDE
from tinkex.batch import (
    BatchItem,
    BatchSummary,
    BatchWorkerError,
    WorkerSetupError,
    run_batch,
    sample_many,
    sample_many_unordered,
)
from tinkex.errors import BadRequestError, ValidationError
from tinkex.server import LocalServer
from tinkex.server.models import ECHO_MODEL

PARAMS = types.SamplingParams(max_tokens=3, seed=0)


class CountingClient:
    """A SamplingClient wrapper that records how many samples are outstanding at once (no mocking: it delegates)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.outstanding = 0
        self.peak = 0
        self.submitted = 0
        self.futures: List[Future] = []

    def sample(self, *args: Any, **kwargs: Any) -> Future:
        future = self._client.sample(*args, **kwargs)
        with self._lock:
            self.outstanding += 1
            self.submitted += 1
            self.peak = max(self.peak, self.outstanding)
            self.futures.append(future)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _future: Future) -> None:
        with self._lock:
            self.outstanding -= 1

    def get_tokenizer(self) -> Any:
        return self._client.get_tokenizer()


class Consumption:
    """A generator of prompts that records how far it has been consumed."""

    def __init__(self, limit: Any = None) -> None:
        self.taken = 0
        self._limit = limit

    def __iter__(self) -> Iterator[List[int]]:
        numbers = itertools.count() if self._limit is None else range(self._limit)
        for number in numbers:
            self.taken += 1
            yield [number % 256]


@pytest.fixture
def service(local_server: LocalServer) -> Iterator[tinkex.ServiceClient]:
    with tinkex.ServiceClient(api_key=local_server.api_key, base_url=local_server.base_url,
                              pickle_api_key=True) as svc:
        yield svc


@pytest.fixture
def echo(service: tinkex.ServiceClient) -> Any:
    return service.create_sampling_client(base_model=ECHO_MODEL)


def first_tokens(results: List[Any]) -> List[int]:
    return [result.sequences[0].tokens[0] for result in results]


def test_results_arrive_out_of_order_but_are_yielded_in_input_order(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(token_delay_ms=4, max_concurrent_generations=64)
    # Early prompts generate the most tokens, so they finish last.
    items = [BatchItem([i], types.SamplingParams(max_tokens=40 - i, seed=0)) for i in range(40)]
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as svc:
        client = svc.create_sampling_client(base_model=ECHO_MODEL)
        arrival = [index for index, _ in sample_many_unordered(client, items, PARAMS, max_in_flight=40)]
        ordered = list(sample_many(client, items, PARAMS, max_in_flight=40))
    assert sorted(arrival) == list(range(40)) and arrival != sorted(arrival)
    assert first_tokens(ordered) == list(range(40))
    assert [len(result.sequences[0].tokens) for result in ordered] == [40 - i for i in range(40)]


def test_prompt_forms_and_per_item_overrides(echo: Any) -> None:
    items = [
        types.ModelInput.from_ints([7, 8]),
        [9, 10],
        (11,),
        "hé",
        BatchItem([12], num_samples=3),
        BatchItem("x", types.SamplingParams(max_tokens=1, seed=5)),
    ]
    results = list(sample_many(echo, items, PARAMS, num_samples=2))
    assert [r.sequences[0].tokens for r in results[:3]] == [[7, 8, 7], [9, 10, 9], [11, 11, 11]]
    assert results[3].sequences[0].tokens == list("hé".encode())[:3]
    assert [len(r.sequences) for r in results] == [2, 2, 2, 2, 3, 2]
    assert results[5].sequences[0].tokens == [(ord("x") + 5) % 256]


def test_input_is_consumed_lazily_with_a_bounded_window(echo: Any) -> None:
    counting = CountingClient(echo)
    endless = Consumption()
    results = sample_many(counting, endless, PARAMS, max_in_flight=8)
    taken: List[int] = []
    for result in results:
        taken.append(result.sequences[0].tokens[0])
        assert endless.taken <= len(taken) + 8
        if len(taken) == 50:
            break
    results.close()  # type: ignore[attr-defined]
    assert taken == list(range(50))
    assert counting.peak <= 8
    assert endless.taken <= 58
    assert all(future.done() for future in counting.futures)  # the rest were cancelled, none left hanging


def test_nothing_is_consumed_or_sent_before_the_first_result_is_asked_for(echo: Any) -> None:
    counting = CountingClient(echo)
    prompts = Consumption(limit=10)
    results = sample_many(counting, prompts, PARAMS)
    assert prompts.taken == 0 and counting.submitted == 0
    assert len(list(results)) == 10 and prompts.taken == 10


def test_on_error_record_yields_typed_errors_in_place(echo: Any) -> None:
    prompts: List[Any] = [[1], [300], [2], object(), [-1], [3]]
    results = list(sample_many(echo, prompts, PARAMS, on_error="record"))
    assert len(results) == 6
    assert first_tokens([results[0], results[2], results[5]]) == [1, 2, 3]
    assert isinstance(results[1], BadRequestError) and "vocabulary" in str(results[1])
    assert isinstance(results[3], ValidationError) and results[3].field == "prompt"
    assert isinstance(results[4], ValidationError) and results[4].field == "tokens"


def test_on_error_raise_yields_earlier_results_then_raises_and_cancels(echo: Any) -> None:
    counting = CountingClient(echo)
    prompts = itertools.chain([[1], [2], [300]], Consumption())
    results = sample_many(counting, prompts, PARAMS, max_in_flight=16)
    assert first_tokens([next(results), next(results)]) == [1, 2]
    with pytest.raises(BadRequestError):
        next(results)
    assert counting.submitted <= 3 + 16
    assert all(future.done() for future in counting.futures)


def test_an_exception_from_the_input_propagates(echo: Any) -> None:
    def broken() -> Iterator[List[int]]:
        yield [1]
        raise RuntimeError("input broke")

    with pytest.raises(RuntimeError, match="input broke"):
        list(sample_many(echo, broken(), PARAMS))


def test_postprocess_runs_on_each_result_and_its_errors_are_recorded(echo: Any) -> None:
    def score(response: types.SampleResponse) -> int:
        token = response.sequences[0].tokens[0]
        if token == 2:
            raise ValueError("cannot score 2")
        return token * 10

    results = list(sample_many(echo, [[1], [2], [3]], PARAMS, postprocess=score, on_error="record"))
    assert results[0] == 10 and results[2] == 30
    assert isinstance(results[1], ValueError)


def test_bad_arguments_fail_before_anything_is_sent(echo: Any) -> None:
    with pytest.raises(ValidationError) as bad_window:
        sample_many(echo, [], PARAMS, max_in_flight=0)
    assert bad_window.value.field == "max_in_flight"
    with pytest.raises(ValidationError) as bad_mode:
        sample_many(echo, [], PARAMS, on_error="ignore")
    assert bad_mode.value.field == "on_error"
    with pytest.raises(ValidationError) as bad_progress:
        sample_many(echo, [], PARAMS, progress="fancy")
    assert bad_progress.value.field == "progress"
    with pytest.raises(ValidationError) as bad_executor:
        sample_many(echo, [], PARAMS, executor=object())
    assert bad_executor.value.field == "executor"


def test_max_request_bytes_measures_a_prompt_past_the_quick_estimate(echo: Any) -> None:
    # 1000 one-digit ids: past the 12-bytes-a-token estimate of a 10 kB limit, but a ~3 kB request
    fits, too_big = [1] * 1000, [123] * 3000
    results = list(sample_many(echo, [fits, too_big], PARAMS, on_error="record", max_request_bytes=10_000))
    assert results[0].sequences[0].tokens == [1, 1, 1]
    assert isinstance(results[1], ValidationError) and results[1].field == "prompt"
    assert "max_request_bytes" in str(results[1])


def test_progress_log_line_reports_count_and_failures(echo: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.batch")
    list(sample_many(echo, [[1], [300], [2]], PARAMS, on_error="record", progress="log"))
    finished = [r.getMessage() for r in caplog.records if r.name.startswith("tinkex.batch")]
    assert finished and finished[-1].startswith("batch: 3/3 done, 1 failed,") and "(finished)" in finished[-1]


def test_progress_bar_on_stderr(echo: Any, capsys: pytest.CaptureFixture[str]) -> None:
    list(sample_many(echo, [[1], [300], [2]], PARAMS, on_error="record", progress="bar"))
    err = capsys.readouterr().err
    assert "3/3" in err and "failed=1" in err


def test_no_progress_when_not_a_terminal(echo: Any, capsys: pytest.CaptureFixture[str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.batch")
    list(sample_many(echo, [[1], [2]], PARAMS))
    assert capsys.readouterr().err == "" and not [r for r in caplog.records if r.name.startswith("tinkex.batch")]


def _spawn_pool(workers: int = 2) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def assert_one_session(server: LocalServer, client: Any, expected: int) -> None:
    records = server.records(client.sampling_session_id)
    worker_records = [r for r in records if r["seq_id"] >= CLONE_SEQ_STRIDE]
    assert len(worker_records) == expected  # sampled by the unpickled clones, on the parent's session


def test_process_pool_samples_from_the_same_session_in_order(local_server: LocalServer,
                                                             service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    prompts = Consumption(limit=300)
    with _spawn_pool() as pool:
        results = list(sample_many(client, prompts, PARAMS, executor=pool, chunk_size=20, max_in_flight=80))
        unordered = dict(sample_many_unordered(client, ([i] for i in range(40)), PARAMS, executor=pool,
                                               chunk_size=7))
    assert first_tokens(results) == [i % 256 for i in range(300)]
    assert sorted(unordered) == list(range(40)) and first_tokens([unordered[i] for i in range(40)]) == list(range(40))
    assert_one_session(local_server, client, 340)


def test_process_pool_records_errors_and_runs_postprocess_in_the_worker(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    with _spawn_pool(1) as pool:
        results = list(sample_many(client, [[1], [300], "ab"], PARAMS, executor=pool, on_error="record",
                                   postprocess=_worker_pid_and_tokens))
    assert isinstance(results[1], BadRequestError)
    assert results[0][1] == [1, 1, 1] and results[2][1] == [97, 98, 97]
    assert results[0][0] != multiprocessing.current_process().pid


def _worker_pid_and_tokens(response: types.SampleResponse) -> Any:
    import os

    return os.getpid(), response.sequences[0].tokens


def test_a_worker_that_cannot_restore_the_client_stops_the_batch_typed(local_server: LocalServer) -> None:
    # No pickled key and no TINKER_API_KEY in the workers' environment: every chunk would fail alike,
    # so the first failure stops the batch (even under on_error="record") with the way out; none hangs.
    with tinkex.ServiceClient(api_key=local_server.api_key, base_url=local_server.base_url) as svc:
        client = svc.create_sampling_client(base_model=ECHO_MODEL)
        with _spawn_pool(1) as pool:
            with pytest.raises(WorkerSetupError) as recorded:
                list(sample_many(client, ([i] for i in range(5)), PARAMS, executor=pool, chunk_size=2,
                                 on_error="record"))
            with pytest.raises(BatchWorkerError) as raised:
                list(sample_many(client, [[1]], PARAMS, executor=pool))
    for error in (recorded.value, raised.value):
        assert isinstance(error, WorkerSetupError) and error.field == "api_key"
        assert "pickle_api_key=True" in str(error) and "TINKER_API_KEY" in str(error)


def _end_the_worker(response: types.SampleResponse) -> Any:
    os._exit(3)  # the worker process dies mid-chunk, as on an OOM kill


def test_a_dead_worker_fails_its_chunk_and_the_broken_pool_stops_the_batch(echo: Any) -> None:
    with _spawn_pool(1) as pool:
        results = sample_many(echo, [[1], [2], [3]], PARAMS, executor=pool, chunk_size=1, max_in_flight=1,
                              on_error="record", postprocess=_end_the_worker)
        lost = next(results)
        with pytest.raises(BatchWorkerError) as stopped:
            next(results)
    assert isinstance(lost, BatchWorkerError) and isinstance(lost.__cause__, BrokenProcessPool)
    assert str(lost).startswith("a chunk of 1 prompts failed in its worker: BrokenProcessPool: ")
    assert str(stopped.value).startswith("the executor refused a chunk: BrokenProcessPool: ")
    assert not isinstance(stopped.value, WorkerSetupError)


def test_run_batch_without_a_tokenizer_writes_null_text_and_keeps_only_the_users_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps({"id": i, "tokens": [i]}) + "\n" for i in (1, 2, 3)))
    caplog.set_level(logging.WARNING, logger="tinkex.batch")
    with FakeTinker() as fake:  # a model whose tokenizer this machine does not have
        fake.queue("/api/v1/retrieve_future", result_answer([104, 105, 33]),
                   json_answer(200, {"error": "stop sequence too long", "category": "user"}),
                   json_answer(200, {"error": "model crashed", "category": "server"}))
        with tinkex.ServiceClient(api_key=KEY, base_url=fake.base_url) as service:
            client = service.create_sampling_client(base_model="acme/no-tokenizer-here")
            summary = run_batch(client, str(source), str(out), PARAMS, max_in_flight=1)
    assert summary == BatchSummary(already_done=0, sampled=1, failed=1, invalid=0, deferred=1)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written[0]["id"] == 1 and written[0]["sequences"][0]["text"] is None
    assert written[0]["sequences"][0]["tokens"] == [104, 105, 33]
    assert written[1]["id"] == 2 and "stop sequence too long" in written[1]["error"]["message"]
    assert len(written) == 2  # the server's own failure is left for a re-run
    assert any("no tokenizer for acme/no-tokenizer-here" in r.getMessage() for r in caplog.records)


def test_dask_local_cluster_with_two_worker_processes(local_server: LocalServer,
                                                      service: tinkex.ServiceClient) -> None:
    distributed = pytest.importorskip("distributed")
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=":0",
                                  worker_dashboard_address=None) as cluster, distributed.Client(cluster) as dask:
        results = list(sample_many(client, Consumption(limit=300), PARAMS, executor=dask, chunk_size=25,
                                   on_error="record"))
        pids = dask.run(_pid)
        recorded = list(sample_many(client, [[1], [300]], PARAMS, executor=dask, on_error="record"))
    assert first_tokens(results) == [i % 256 for i in range(300)]
    assert len(set(pids.values())) == 2
    assert isinstance(recorded[1], BadRequestError)
    assert_one_session(local_server, client, 301)  # the out-of-vocabulary prompt was refused before a record


def _pid() -> int:
    import os

    return os.getpid()


def test_ctrl_c_cancels_outstanding_samples(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(token_delay_ms=20, max_concurrent_generations=16)
    slow = types.SamplingParams(max_tokens=500, seed=0)  # ~10 s each unless cancelled
    main_thread = threading.main_thread().ident
    assert main_thread is not None
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as svc:
        counting = CountingClient(svc.create_sampling_client(base_model=ECHO_MODEL))
        timer = threading.Timer(0.3, signal.pthread_kill, (main_thread, signal.SIGINT))
        timer.start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            list(sample_many(counting, ([i] for i in range(100)), slow, max_in_flight=8))
        timer.join()
        assert time.monotonic() - started < 5
        assert counting.submitted == 8 and all(future.cancelled() for future in counting.futures)
