"""``sample_stream`` / ``stream_text`` against the real local server (and a scripted one).

The local server streams tokens as its worker produces them, paced by ``token_delay_ms``;
its fault profile injects 5xx/429/dropped connections before the stream and a dropped
connection or slow events after it starts, and ``/admin/stats`` counts the stream
disconnects it saw. A scripted server stands in where the local one cannot: a server without
the route (404), interleaved sequences, a truncated or mislabelled body.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, List, Tuple

import pytest

import tinkex
from tests.fake_tinker import SSID, FakeTinker, result_answer
from tests.scripted_server import Answer
from tests.support.waiting import wait_until
from tests.with_server.conftest import RawApi
from tinkex import errors, types
from tinkex._wire.byte_tokenizer import ByteTokenizer
from tinkex._wire.proto import encode_sample_response
from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL, ECHO_MODEL
from tinkex.types import SampledSequence, SampleResponse, SampleStreamChunk, StopReason

TOKENIZER = ByteTokenizer()
PROMPT = types.ModelInput.from_ints(TOKENIZER.encode("The Python language "))
SSE = (("Content-Type", "text/event-stream"),)



def connect(server: Any, model: str = ECHO_MODEL, **kwargs: Any) -> Tuple[tinkex.ServiceClient, Any]:
    key = getattr(server, "api_key", "tml-fake-tinker-key-42")
    service = tinkex.ServiceClient(api_key=key, base_url=server.base_url, **kwargs)
    return service, service.create_sampling_client(base_model=model)


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """``clients(server, model)`` -> a SamplingClient; every ServiceClient is closed after the test."""
    opened: List[tinkex.ServiceClient] = []

    def make(server: Any, model: str = ECHO_MODEL, **kwargs: Any) -> Any:
        service, client = connect(server, model, **kwargs)
        opened.append(service)
        return client

    yield make
    for service in opened:
        service.close()


def tokens_by_sequence(chunks: List[SampleStreamChunk], n: int) -> List[List[SampleStreamChunk]]:
    return [[c for c in chunks if c.sequence_index == i and c.is_token] for i in range(n)]


def assert_same_as_sample(chunks: List[SampleStreamChunk], response: SampleResponse) -> None:
    n = len(response.sequences)
    for seq, mine in zip(response.sequences, tokens_by_sequence(chunks, n)):
        assert [c.token_id for c in mine] == seq.tokens
        assert [c.logprob for c in mine] == seq.logprobs
        assert [c.index for c in mine] == list(range(len(seq.tokens)))
    dones = {c.sequence_index: c for c in chunks if c.is_done}
    assert sorted(dones) == list(range(n))
    for index, seq in enumerate(response.sequences):
        assert dones[index].finish_reason == seq.stop_reason and dones[index].total_tokens == len(seq.tokens)


def open_sockets() -> int:
    return sum(1 for fd in os.listdir("/proc/self/fd") if _is_socket(fd))


def _is_socket(fd: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False


# -- it really streams -----------------------------------------------------------------------


def test_chunks_arrive_while_tokens_are_generated(fresh_server: Callable[..., LocalServer], clients: Any) -> None:
    client = clients(fresh_server(token_delay_ms=50))
    params = types.SamplingParams(max_tokens=20, seed=1)
    started = time.monotonic()
    arrivals, chunks = [], []
    for chunk in client.sample_stream(PROMPT, params):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert [c.is_token for c in chunks] == [True] * 20 + [False]
    first, last = arrivals[0], arrivals[-1]
    assert last >= 0.95  # 20 tokens at 50 ms each
    assert first < last / 4  # the first chunk long before the end, not with it
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:20])]
    assert sum(gap >= 0.02 for gap in gaps) >= 15  # one at a time as generated, never in a batch


def test_stream_text_joins_to_the_decoded_text_without_replacement_characters(
    local_server: LocalServer, clients: Any
) -> None:
    text = "naïve café — 日本語 ✓ 🙂!"
    client = clients(local_server)
    prompt = types.ModelInput.from_ints(TOKENIZER.encode(text))
    params = types.SamplingParams(max_tokens=len(text.encode()), seed=0)  # the echo model plays it back
    pieces = list(client.stream_text(prompt, params))
    assert "".join(pieces) == text
    assert all(piece and "\ufffd" not in piece for piece in pieces)
    assert len(pieces) == len(text)  # one piece per character: multi-byte ones held back until whole
    chunks = list(client.sample_stream(prompt, params))
    assert "".join(c.token or "" for c in chunks) == text


# -- equivalence with sample() ---------------------------------------------------------------

PARAMS = [
    types.SamplingParams(max_tokens=24, seed=3),
    types.SamplingParams(max_tokens=40, seed=11, temperature=0.7, top_k=20, stop=["\n"]),
    types.SamplingParams(max_tokens=16, seed=5, temperature=1.3, top_p=0.8),
    types.SamplingParams(max_tokens=12, seed=9, temperature=0.0),
]


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"seed{p.seed}")
def test_stream_equals_sample(local_server: LocalServer, clients: Any, params: types.SamplingParams,
                              num_samples: int) -> None:
    client = clients(local_server, DEFAULT_MODEL)
    chunks = list(client.sample_stream(PROMPT, params, num_samples))
    response = client.sample(PROMPT, num_samples, params).result(30)
    assert_same_as_sample(chunks, response)
    for seq, mine in zip(response.sequences, tokens_by_sequence(chunks, num_samples)):
        assert "".join(c.token or "" for c in mine) == TOKENIZER.decode(seq.tokens)


def sse(event: str, **data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def test_interleaved_sequences_equal_the_sampled_result(clients: Any) -> None:
    response = SampleResponse(sequences=[
        SampledSequence(tokens=[72, 105, 33], logprobs=[-0.5, -1.5, -2.5], stop_reason=StopReason.STOP),
        SampledSequence(tokens=[79, 75], logprobs=[-0.25, -0.75], stop_reason=StopReason.LENGTH),
    ])
    body = b": keep-alive\n\n" + b"".join([
        sse("token", index=0, token_id=79, token="O", logprob=-0.25, sequence_index=1),
        sse("token", index=0, token_id=72, token="H", logprob=-0.5),  # no sequence_index: sequence 0
        sse("token", index=1, token_id=105, token="i", logprob=-1.5, sequence_index=0),
        sse("token", index=1, token_id=75, token="K", logprob=-0.75, sequence_index=1),
        sse("done", finish_reason="length", total_tokens=2, sequence_index=1),
        sse("token", index=2, token_id=33, token="!", logprob=-2.5, sequence_index=0),
        sse("done", finish_reason="stop", total_tokens=3, sequence_index=0),
    ]).replace(b"\n", b"\r\n")
    with FakeTinker() as fake:
        fake.queue("/api/v1/stream_sample", Answer(body=body, headers=SSE))
        fake.queue("/api/v1/retrieve_future", Answer(body=encode_sample_response(response),
                                                     headers=(("Content-Type", "application/x-protobuf"),)))
        client = clients(fake)
        params = types.SamplingParams(max_tokens=3, seed=1)
        chunks = list(client.sample_stream(PROMPT, params, 2))
        assert [c.sequence_index for c in chunks] == [1, 0, 0, 1, 1, 0, 0]
        assert_same_as_sample(chunks, client.sample(PROMPT, 2, params).result(10))
        (call,) = fake.calls("/api/v1/stream_sample")
    headers = {k.lower(): v for k, v in call.headers.items()}
    assert headers["accept"] == "text/event-stream" and headers["x-tinker-request-type"] == "StreamSample"
    assert headers["x-sdk-method"] == "SamplingClient.sample_stream" and headers["x-api-key"].startswith("tml-")
    request = json.loads(call.body)
    assert request["seq_id"] == 0 and request["sampling_session_id"] == SSID and request["type"] == "sample"
    assert request["num_samples"] == 2 and request["sampling_params"]["seed"] == 1


# -- before the first byte: the discipline of sample() ---------------------------------------


@pytest.mark.parametrize("fault", ["500", "drop_before", "429"])
def test_failures_before_the_stream_are_resubmitted_with_the_same_seq_id(
    fresh_server: Callable[..., LocalServer], clients: Any, fault: str
) -> None:
    server = fresh_server()
    client = clients(server)
    list(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3)))  # seq_id 0
    server.set_faults(f"stream_sample.{fault}=1.0")
    result: List[Any] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: result.append(list(
        client.sample_stream(PROMPT, types.SamplingParams(max_tokens=4, seed=2)))))
    worker.start()
    wait_until(lambda: server.stats()["faults_total"] >= 1)
    server.set_faults(None)
    worker.join(30)
    assert result and [c.token_id for c in result[0] if c.is_token] == \
        client.sample(PROMPT, 1, types.SamplingParams(max_tokens=4, seed=2)).result(30).sequences[0].tokens
    assert time.monotonic() - started >= 0.9  # resubmitted after the 1 s pause (429: backoff)
    streamed = [r for r in server.records(client.sampling_session_id) if r["seq_id"] == 1]
    assert len(streamed) == 1  # the retried request kept seq_id 1; no other seq_id was spent on it
    assert max(r["seq_id"] for r in server.records(client.sampling_session_id)) == 2  # the sample() after it
    if fault == "429":
        assert client._holder.limits.backoff.until > 0


def test_a_final_error_before_the_stream_is_raised_by_the_call(local_server: LocalServer, clients: Any) -> None:
    client = clients(local_server)
    with pytest.raises(errors.BadRequestError, match="num_samples=129"):
        client.sample_stream(PROMPT, types.SamplingParams(max_tokens=2), 129)


def test_bad_arguments_and_closed_clients(local_server: LocalServer) -> None:
    service, client = connect(local_server)
    with service:
        with pytest.raises(errors.ValidationError, match="sampling_params"):
            client.sample_stream(PROMPT, {"max_tokens": 2})
        with pytest.raises(errors.ValidationError, match="timeout"):
            client.sample_stream(PROMPT, types.SamplingParams(), timeout=-1)
        with pytest.raises(errors.ValidationError, match="idle_timeout"):
            client.sample_stream(PROMPT, types.SamplingParams(), idle_timeout=0)
        client.close()
        with pytest.raises(errors.ClientClosedError):
            client.sample_stream(PROMPT, types.SamplingParams())


def test_a_stream_on_a_client_still_initialising_waits_for_it(clients: Any) -> None:
    """Before the redesign this raised ValidationError (the wrong class); now the call waits for
    initialisation to finish and then goes on."""
    with FakeTinker() as fake:
        fake.queue("/api/v1/create_sampling_session",
                   Answer(body=json.dumps({"sampling_session_id": SSID}).encode(), delay=1.0))
        fake.queue("/api/v1/stream_sample", Answer(status=404, body=b'{"detail": "Not Found"}'))
        fake.queue("/api/v1/retrieve_future", result_answer([5, 6]))
        with tinkex.ServiceClient(api_key="tml-fake-tinker-key-42", base_url=fake.base_url) as service:
            ready = service.create_sampling_client_async(base_model=ECHO_MODEL)
            client = service._clients[-1]
            started = time.monotonic()
            with client.sample_stream(PROMPT, types.SamplingParams(max_tokens=2)) as stream:
                tokens = [chunk.token_id for chunk in stream if chunk.is_token]
            assert tokens == [5, 6]
            assert time.monotonic() - started >= 0.9  # it waited for create_sampling_session
            assert ready.result(10) is client


def test_streams_wait_for_a_dispatch_slot(local_server: LocalServer, clients: Any) -> None:
    client = clients(local_server)
    slots = client._holder.limits.dispatch.slots
    taken = slots.remaining
    slots.acquire(taken)  # every submit slot of this ServiceClient is busy
    try:
        started = time.monotonic()
        with pytest.raises(errors.APITimeoutError, match="admission"):
            client.sample_stream(PROMPT, types.SamplingParams(max_tokens=2), timeout=0.3)
        assert time.monotonic() - started >= 0.25
    finally:
        slots.release(taken)
    assert list(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=2)))[-1].is_done
    assert slots.remaining == taken  # the slot is held only until the answer's headers arrive


def test_a_200_that_is_not_an_event_stream_is_a_decode_error(clients: Any) -> None:
    with FakeTinker() as fake:
        fake.queue("/api/v1/stream_sample", Answer(body=b'{"ok":true}'))
        client = clients(fake)
        with pytest.raises(errors.DecodeError, match="text/event-stream"):
            client.sample_stream(PROMPT, types.SamplingParams(max_tokens=2))


# -- after the first byte: never silently truncated ------------------------------------------


def test_a_dropped_connection_says_how_many_chunks_arrived(
    fresh_server: Callable[..., LocalServer], clients: Any
) -> None:
    server = fresh_server(faults="stream_sample.drop_after=1.0")
    client = clients(server)
    stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=10))
    received = []
    with pytest.raises(errors.APIConnectionError, match=r"after 1 chunk\(s\)") as caught:
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 1 and stream.chunks_received == 1
    assert not isinstance(caught.value, errors.APITimeoutError)
    assert server.stats()["requests"]["stream_sample"] == 1  # never resubmitted once a chunk was out


def test_a_body_ending_before_done_is_an_error(clients: Any) -> None:
    with FakeTinker() as fake:
        body = sse("token", index=0, token_id=1, token="a") + sse("token", index=1, token_id=2, token="b")
        fake.queue("/api/v1/stream_sample", Answer(body=body, headers=SSE),
                   Answer(body=body + b'event: done\ndata: {"finish_reason":"st', headers=SSE))
        client = clients(fake)
        stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3))
        with pytest.raises(errors.APIConnectionError, match=r"before sequence\(s\) \[0\].*after 2 chunk\(s\)"):
            list(stream)
        with pytest.raises(errors.APIConnectionError, match=r"middle of an event after 2 chunk"):
            list(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3)))


def test_an_error_event_from_the_server_raises_request_failed(
    fresh_server: Callable[..., LocalServer], clients: Any
) -> None:
    server = fresh_server(token_delay_ms=50)
    client = clients(server)
    stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=100))
    assert next(stream).is_token and stream.request_id
    api = RawApi(server)
    try:
        api.ok("cancel_future", {"request_id": stream.request_id})
    finally:
        api.close()
    with pytest.raises(errors.RequestFailedError, match="cancelled") as caught:
        list(stream)
    assert caught.value.category == "user" and caught.value.request_id == stream.request_id


def test_a_scripted_error_event_keeps_message_and_category(clients: Any) -> None:
    with FakeTinker() as fake:
        body = sse("token", index=0, token_id=1) + sse("error", message="GPU on fire", category="server")
        fake.queue("/api/v1/stream_sample", Answer(body=body, headers=SSE + (("X-Request-Id", "req-9"),)))
        client = clients(fake)
        with pytest.raises(errors.RequestFailedError, match="GPU on fire") as caught:
            list(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3)))
    assert caught.value.category == "server" and caught.value.request_id == "req-9"


def test_closing_the_client_ends_a_blocked_stream(fresh_server: Callable[..., LocalServer]) -> None:
    service, client = connect(fresh_server(token_delay_ms=5000))
    with service:
        stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=5))
        threading.Timer(0.3, client.close).start()
        started = time.monotonic()
        with pytest.raises(errors.ClientClosedError, match=r"after 0 chunk"):
            next(stream)
        assert time.monotonic() - started < 3


# -- time limits -----------------------------------------------------------------------------


def test_keep_alives_do_not_outlive_the_deadline(fresh_server: Callable[..., LocalServer], clients: Any) -> None:
    server = fresh_server(token_delay_ms=60_000, sse_keepalive_s=0.05)
    client = clients(server)
    started = time.monotonic()
    stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3), timeout=1.0, idle_timeout=0.3)
    with pytest.raises(errors.APITimeoutError, match="deadline"):
        next(stream)
    elapsed = time.monotonic() - started
    assert 0.95 <= elapsed < 3.0  # kept alive past the 0.3 s idle timeout, ended by the deadline
    wait_until(lambda: server.stats()["stream_disconnects"] == 1)


def test_silence_ends_with_the_idle_timeout(fresh_server: Callable[..., LocalServer], clients: Any) -> None:
    client = clients(fresh_server(token_delay_ms=60_000))
    started = time.monotonic()
    stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3), idle_timeout=0.3)
    with pytest.raises(errors.APITimeoutError, match="idle read timeout.* after 0 chunk"):
        next(stream)
    assert time.monotonic() - started < 3.0


def test_slow_events_still_stream_completely(fresh_server: Callable[..., LocalServer], clients: Any) -> None:
    server = fresh_server(faults="sse_slow_ms=100")
    client = clients(server)
    params = types.SamplingParams(max_tokens=4, seed=4)
    started = time.monotonic()
    arrivals, chunks = [], []
    for chunk in client.sample_stream(PROMPT, params, idle_timeout=2.0):
        arrivals.append(time.monotonic() - started)
        chunks.append(chunk)
    assert_same_as_sample(chunks, client.sample(PROMPT, 1, params).result(30))
    assert arrivals[-1] - arrivals[0] >= 0.35  # 5 events, 100 ms apart, each delivered on arrival
    with pytest.raises(errors.APITimeoutError, match="idle"):
        list(client.sample_stream(PROMPT, params, idle_timeout=0.03))


# -- leaving early ---------------------------------------------------------------------------


def _break_and_forget(client: Any) -> None:
    for _chunk in client.sample_stream(PROMPT, types.SamplingParams(max_tokens=200)):
        break  # the iterator is collected right after


def _close(client: Any) -> None:
    stream = client.sample_stream(PROMPT, types.SamplingParams(max_tokens=200))
    next(stream)
    stream.close()
    stream.close()  # idempotent


def _with_exit(client: Any) -> None:
    with client.sample_stream(PROMPT, types.SamplingParams(max_tokens=200)) as stream:
        next(stream)


def _islice(client: Any) -> None:
    assert len(list(itertools.islice(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=200)), 2))) == 2


def _text_break(client: Any) -> None:
    for _piece in client.stream_text(PROMPT, types.SamplingParams(max_tokens=200)):
        break


@pytest.mark.parametrize("leave", [_break_and_forget, _close, _with_exit, _islice, _text_break],
                         ids=lambda f: f.__name__.strip("_"))
def test_leaving_early_disconnects_and_stops_the_generation(
    fresh_server: Callable[..., LocalServer], clients: Any, leave: Callable[[Any], None]
) -> None:
    server = fresh_server(token_delay_ms=20)
    client = clients(server)
    leave(client)
    gc.collect()
    wait_until(lambda: server.stats()["stream_disconnects"] == 1)
    wait_until(lambda: server.stats()["stream_cancels"] == 1)  # the server stopped generating
    wait_until(lambda: server.stats()["running"] == 0)  # its worker saw the cancel at the next token


def abandon_streams(server: LocalServer, client: Any, count: int) -> None:
    ways = [_break_and_forget, _close, _with_exit, _islice]
    baseline = open_sockets()
    peak = baseline
    for i in range(count):
        ways[i % len(ways)](client)
        if i % 25 == 0:
            peak = max(peak, open_sockets())
    gc.collect()
    wait_until(lambda: server.stats()["stream_disconnects"] == count, timeout=60)
    peak = max(peak, open_sockets())
    assert peak - baseline <= 8, (baseline, peak)  # closed as abandoned, not piling up
    assert open_sockets() - baseline <= 4
    pools = client._engine.transport._adapter.poolmanager.pools  # a RecentlyUsedContainer: no plain iteration
    for pool in [pools[key] for key in list(pools.keys())]:
        assert pool.num_connections >= 1 and pool.pool.qsize() <= pool.pool.maxsize
    # the pool still works: one more full stream on the same client
    assert list(client.sample_stream(PROMPT, types.SamplingParams(max_tokens=3)))[-1].is_done


def test_abandoned_streams_leak_no_connections(fresh_server: Callable[..., LocalServer], clients: Any) -> None:
    server = fresh_server(token_delay_ms=5)
    abandon_streams(server, clients(server), 200)


@pytest.mark.slow
def test_a_thousand_abandoned_streams_leak_no_connections(
    fresh_server: Callable[..., LocalServer], clients: Any
) -> None:
    server = fresh_server(token_delay_ms=5)
    abandon_streams(server, clients(server), 1000)


# -- fallback for servers without the route --------------------------------------------------


def test_a_404_falls_back_to_asample_once_and_is_remembered(clients: Any, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [104, 195, 169, 33]  # "hé!": the client's tokenizer decodes the fallback's tokens too
    with FakeTinker() as fake:
        fake.queue("/api/v1/retrieve_future", result_answer(tokens), result_answer(tokens), result_answer(tokens))
        client = clients(fake, "tinkex/echo")
        params = types.SamplingParams(max_tokens=4, seed=1)
        with caplog.at_level(logging.INFO, logger="tinkex._sampling.stream"):
            first = list(client.sample_stream(PROMPT, params))
            second = list(client.sample_stream(PROMPT, params))
        assert len(fake.calls("/api/v1/stream_sample")) == 1  # probed once, then remembered
        assert fake.seq_ids() == [1, 2]  # seq_id 0 went to the probe
        expected = client.sample(PROMPT, 1, params).result(10)
    assert first == second
    assert_same_as_sample(first, expected)
    assert "".join(c.token or "" for c in first) == "hé!"
    notes = [r for r in caplog.records if r.name == "tinkex._sampling.stream" and r.levelno == logging.INFO]
    assert len(notes) == 1 and "404" in notes[0].getMessage()
    assert client._target.current.stream_supported is False
