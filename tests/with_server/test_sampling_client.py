"""The SamplingClient end to end against the real local server (issue 4's proof)."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import pickle
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import tinkex
from tests.fake_tinker import VirtualTime
from tests.support.waiting import wait_until
from tinkex import errors, types
from tinkex._wire.byte_tokenizer import ByteTokenizer
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL, load_model

TOKENIZER = ByteTokenizer()
PROMPT = types.ModelInput.from_ints(TOKENIZER.encode("The Python language "))



def tinkex_threads() -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tinkex-")]


@pytest.fixture
def service(local_server: LocalServer) -> Iterator[tinkex.ServiceClient]:
    with tinkex.ServiceClient(api_key=local_server.api_key, base_url=local_server.base_url) as client:
        yield client


def test_sample_text_model(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    params = types.SamplingParams(max_tokens=30, seed=11, temperature=0.8, stop=["\n\n"])
    first = client.sample(PROMPT, 2, params).result(30)
    again = client.sample(PROMPT, 2, params).result(30)
    assert [s.tokens for s in first.sequences] == [s.tokens for s in again.sequences]
    assert len(first.sequences) == 2 and first.sequences[0].tokens != first.sequences[1].tokens
    for seq in first.sequences:
        assert 0 < len(seq.tokens) <= 30 and len(seq.logprobs or []) == len(seq.tokens)
        assert seq.stop_reason in ("stop", "length") and seq.sequence_id
    assert first.sequences[0].sequence_id != again.sequences[0].sequence_id


def test_sampled_logprobs_match_compute_logprobs(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    seq = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=20, seed=5)).result(30).sequences[0]
    full = PROMPT.append(types.EncodedTextChunk(tokens=seq.tokens))
    scored = client.compute_logprobs(full).result(30)
    assert scored[0] is None and len(scored) == full.length
    assert scored[PROMPT.length:] == seq.logprobs


def test_prompt_logprobs_and_topk(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    result = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=2, seed=1), include_prompt_logprobs=True,
                           topk_prompt_logprobs=3).result(30)
    assert result.prompt_logprobs is not None and result.prompt_logprobs[0] is None
    assert len(result.prompt_logprobs) == PROMPT.length
    assert result.topk_prompt_logprobs is not None and result.topk_prompt_logprobs[0] is None
    assert all(len(row) == 3 for row in result.topk_prompt_logprobs[1:] if row is not None)


def test_thousand_concurrent_samples_are_all_correct(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    model = load_model(ECHO_MODEL)
    prompts = [types.ModelInput.from_ints([i % 256, (i * 7) % 256, 65]) for i in range(1000)]
    params = [types.SamplingParams(max_tokens=6, seed=i) for i in range(1000)]
    futures = [client.sample(p, 1, sp) for p, sp in zip(prompts, params)]
    for prompt, sp, future in zip(prompts, params, futures):
        expected = model.sample(prompt.to_ints(), sp, 1)[0]
        assert future.result(60).sequences[0].tokens == expected.tokens
    assert client.get_telemetry().snapshot().completed == 1000


def sample_through_one_fault(server: LocalServer) -> Tuple[tinkex.SamplingClient, List[Dict[str, Any]]]:
    """Sample once while the server's fault profile is on, clearing it after the first fault."""
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=4, seed=1))
        wait_until(lambda: server.stats()["faults_total"] >= 1)
        server.set_faults(None)
        future.result(30)
        return client, server.records(client.sampling_session_id)


def test_dropped_promise_is_resubmitted_with_the_same_seq_id(fresh_server: Callable[..., LocalServer]) -> None:
    client, records = sample_through_one_fault(fresh_server(faults="seed=1,asample.drop_after=1.0"))
    assert [(r["seq_id"], r["generations"]) for r in records] == [(0, 1)]
    assert client.get_telemetry().snapshot().resubmissions >= 1


def test_expired_promise_takes_a_new_seq_id(fresh_server: Callable[..., LocalServer]) -> None:
    _, records = sample_through_one_fault(fresh_server(faults="seed=1,retrieve_future.410=1.0"))
    assert sorted(r["seq_id"] for r in records)[:2] == [0, 1]


def test_429_backoff_is_shared_and_timed(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(faults="seed=2,asample.429=1.0")
    vt = VirtualTime()
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url, clock=vt.clock()) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=4, seed=1))
        wait_until(lambda: client.get_telemetry().snapshot().rate_limited >= 2)
        server.set_faults(None)
        future.result(30)
        records = server.records(client.sampling_session_id)
    assert [r["seq_id"] for r in records] == [0]
    backoffs = [s for s in vt.sleeps if s >= 0.5]
    assert backoffs and all(0.7 <= s <= 1.01 for s in backoffs)


def test_pause_window_logs_once_per_minute(fresh_server: Callable[..., LocalServer],
                                           caplog: pytest.LogCaptureFixture) -> None:
    server = fresh_server(faults="seed=3,paused_capacity=1s,paused_capacity.reason=GPU maintenance",
                          poll_hold_s=0.2)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        with caplog.at_level(logging.WARNING, logger="tinkex"):
            futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=4, seed=i)) for i in range(3)]
            for future in futures:
                future.result(30)
        expected = f"Sampling is paused for {client.sampling_session_id}. Reason: GPU maintenance"
    messages = [r.getMessage() for r in caplog.records if "paused" in r.getMessage()]
    assert messages == [expected]


def test_raising_observer_never_breaks_sampling(fresh_server: Callable[..., LocalServer],
                                                caplog: pytest.LogCaptureFixture) -> None:
    class Exploding:
        def on_queue_state_change(self, state: Any, metadata: Any) -> None:
            raise RuntimeError("observer bug")

    server = fresh_server(faults="seed=3,paused_rate_limit=0.6s", poll_hold_s=0.2)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL, queue_state_observer=Exploding())
        with caplog.at_level(logging.ERROR, logger="tinkex"):
            client.sample(PROMPT, 1, types.SamplingParams(max_tokens=4, seed=1)).result(30)
    assert "QueueStateObserver Exploding crashed: observer bug" in caplog.text


def test_deadline_stops_polling(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=(DEFAULT_MODEL,), token_delay_ms=200, poll_hold_s=0.2)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=DEFAULT_MODEL)
        started = time.monotonic()
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=50, seed=1), timeout=0.6)
        error = future.exception(10)
        elapsed = time.monotonic() - started
        polls_then = server.stats()["requests"].get("retrieve_future", 0)
        time.sleep(0.6)
        polls_later = server.stats()["requests"].get("retrieve_future", 0)
    assert isinstance(error, errors.APITimeoutError) and elapsed < 2.0
    assert polls_later == polls_then


def test_cancel_reaches_the_server(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=(DEFAULT_MODEL,), token_delay_ms=100, poll_hold_s=0.3,
                          dynamic_config={"sample_cancel_enabled": True})
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=DEFAULT_MODEL)
        future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=200, seed=1))
        wait_until(lambda: server.stats()["requests"].get("retrieve_future", 0) >= 1)
        assert future.cancel() and future.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(1)
        wait_until(lambda: server.stats()["cancels"] >= 1)
        assert client.get_telemetry().snapshot().cancelled == 1


def test_close_cancels_polled_requests_on_the_server(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=(DEFAULT_MODEL,), token_delay_ms=100, poll_hold_s=0.3,
                          dynamic_config={"sample_cancel_enabled": True})
    service = tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url)
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=300, seed=i)) for i in range(3)]
    wait_until(lambda: server.stats()["requests"].get("retrieve_future", 0) >= 3)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5
    assert all(f.cancelled() for f in futures)
    assert server.stats()["cancels"] >= 1


def test_result_timeout_cancels_nothing(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    future = client.sample(PROMPT, 1, types.SamplingParams(max_tokens=400, seed=2))
    try:
        future.result(0.0001)
    except concurrent.futures.TimeoutError:
        pass
    assert not future.cancelled() and future.result(30).sequences


def test_heartbeats_and_finish(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server()
    service = tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url, heartbeat_interval=0.1)
    service.create_sampling_client(base_model=ECHO_MODEL)
    wait_until(lambda: server.stats()["heartbeats"] >= 3)
    service.close()
    service.close()  # idempotent
    assert server.stats()["sessions_finished"] == 1


def test_close_with_work_pending_stops_every_thread(fresh_server: Callable[..., LocalServer]) -> None:
    server = fresh_server(models=(DEFAULT_MODEL,), token_delay_ms=50, max_concurrent_generations=1)
    before = set(tinkex_threads())
    service = tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url)
    client = service.create_sampling_client(base_model=DEFAULT_MODEL)
    futures = [client.sample(PROMPT, 1, types.SamplingParams(max_tokens=100, seed=i)) for i in range(20)]
    time.sleep(0.3)
    started = time.monotonic()
    service.close()
    assert time.monotonic() - started < 5
    assert all(f.done() for f in futures) and any(f.cancelled() for f in futures)
    wait_until(lambda: set(tinkex_threads()) <= before, timeout=5)
    with pytest.raises(errors.ClientClosedError):
        client.sample(PROMPT, 1, types.SamplingParams(max_tokens=1))


def test_bad_arguments_raise_synchronously(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    with pytest.raises(errors.ValidationError) as info:
        client.sample(PROMPT, 0, types.SamplingParams())
    assert info.value.field == "num_samples"
    with pytest.raises(errors.ValidationError, match="prompt"):
        client.sample([1, 2], 1, types.SamplingParams())  # type: ignore[arg-type]
    with pytest.raises(errors.ValidationError, match="timeout"):
        client.sample(PROMPT, 1, types.SamplingParams(), timeout=-1)
    with pytest.raises(errors.ValidationError, match="model_path"):
        service.create_sampling_client(model_path="s3://nope")


def test_unknown_model_fails_creation(service: tinkex.ServiceClient) -> None:
    with pytest.raises(errors.BadRequestError, match="no-such-model"):
        service.create_sampling_client(base_model="no-such-model")


def test_create_async_returns_a_future(service: tinkex.ServiceClient) -> None:
    future = tinkex.SamplingClient.create_async(service, base_model=ECHO_MODEL)
    client = future.result(30)
    assert client.sampling_session_id.endswith(":0") or client.sampling_session_id


def _sample_in_worker(client: tinkex.SamplingClient, seed: int) -> List[int]:
    params = types.SamplingParams(max_tokens=5, seed=seed)
    return client.sample(types.ModelInput.from_ints([72, 105]), 1, params).result(30).sequences[0].tokens


def test_pickled_client_samples_in_a_process_pool(fresh_server: Callable[..., LocalServer],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = fresh_server(client_config={"sample_join_sampling_session": True})
    monkeypatch.setenv("TINKER_API_KEY", server.api_key)
    with tinkex.ServiceClient(base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO_MODEL)
        blob = pickle.dumps(client)
        assert server.api_key.encode() not in blob
        local = _sample_in_worker(client, 3)
        with concurrent.futures.ProcessPoolExecutor(2) as pool:
            remote = list(pool.map(_sample_in_worker, [client] * 4, [3, 3, 4, 5]))
        seq_ids = [r["seq_id"] for r in server.records(client.sampling_session_id)]
    assert remote[0] == remote[1] == local
    assert 0 in seq_ids and any(s >= 10**9 for s in seq_ids)
    assert len(seq_ids) == len(set(seq_ids)) == 5


def test_key_not_in_repr(service: tinkex.ServiceClient) -> None:
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    key = service.config.api_key
    assert key not in repr(service) and key not in repr(client) and key not in repr(service.config)
    assert os.environ.get("TINKER_API_KEY") is None


def test_a_caller_waiting_on_its_sample_runs_it_itself_and_a_bounded_wait_leaves_it_to_a_worker(
        service: tinkex.ServiceClient, caplog: pytest.LogCaptureFixture) -> None:
    """``sample().result()`` one at a time costs no hand-off: the waiting thread runs the sample
    (its HTTP calls log from that thread); ``result(timeout)`` must return on time, so a worker
    runs the sample instead."""
    client = service.create_sampling_client(base_model=ECHO_MODEL)
    params = types.SamplingParams(max_tokens=4, seed=1)
    client.sample(PROMPT, 1, params).result()  # the pool's first worker now exists
    with caplog.at_level(logging.DEBUG, logger="tinkex._http.transport"):
        inline = client.sample(PROMPT, 1, params).result()
        caller = {r.threadName for r in caplog.records if "asample" in r.getMessage()}
        caplog.clear()
        pooled = client.sample(PROMPT, 1, params).result(timeout=30)
        worker = {r.threadName for r in caplog.records if "asample" in r.getMessage()}
    assert caller == {threading.current_thread().name}
    assert len(worker) == 1 and next(iter(worker)).startswith("tinkex-sample")
    assert inline.sequences[0].tokens == pooled.sequences[0].tokens  # same seed, same answer either way
