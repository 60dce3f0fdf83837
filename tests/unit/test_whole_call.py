"""The whole-call loop (protocol.md 7.1 layer 4, 7.3) over the in-memory transport.

One sample's complete path: asample (with same-seq_id resends) -> retrieve_future -> result,
and what happens when a layer below gives up.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import attrs
import pytest

from tests.support.loops import Rig, call, promise_for_seq, result_bytes
from tinkex._policy import RetryConfig
from tinkex._sampling.call import MAX_SESSION_RECOVERIES
from tinkex._session import SessionInfo
from tinkex.errors import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    NotFoundError,
    RequestFailedError,
)
from tinkex.types import DynamicConfig


def test_a_sample_end_to_end_carries_its_sequence_ids() -> None:
    rig = Rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", {"type": "try_again"}, result_bytes((1, 2)))
    response = rig.sampler.execute(rig.state, call())
    assert response.sequences[0].tokens == [1, 2]
    assert response.sequences[0].sequence_id == "req-0:seq:0"
    assert rig.seq_ids() == [0]


def test_a_resubmitted_asample_keeps_its_seq_id_then_a_410_takes_the_next() -> None:
    """protocol.md 7.3's example: asample 500 -> same seq_id 1 s later; poll 410 -> seq_id 1."""
    rig = Rig()
    rig.transport.on("asample", (500, b"{}"), promise_for_seq)
    rig.transport.on("retrieve_future", (410, {"detail": "expired"}), result_bytes())
    rig.sampler.execute(rig.state, call())
    assert rig.seq_ids() == [0, 0, 1]
    assert rig.time.sleeps[0] == 1.0  # the submit layer's resend
    assert rig.time.sleeps[1] == pytest.approx(0.5)  # whole-call delay 0.5 · 2^0, jitter at its middle


def test_a_failed_request_is_never_retried() -> None:
    rig = Rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", {"error": "bad prompt", "category": "user"})
    with pytest.raises(RequestFailedError) as raised:
        rig.sampler.execute(rig.state, call())
    assert raised.value.category == "user"
    assert rig.seq_ids() == [0]


def test_a_fatal_poll_answer_is_raised_as_itself_and_not_retried() -> None:
    rig = Rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", (409, {"detail": "conflict"}))
    with pytest.raises(ConflictError):
        rig.sampler.execute(rig.state, call())
    assert rig.seq_ids() == [0]


def test_whole_call_retries_take_new_seq_ids_with_growing_delays() -> None:
    rig = Rig()
    rig.state = rig.target.publish(attrs.evolve(rig.state, retry_config=RetryConfig(max_retries=3)))
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", (410, b"{}"))
    with pytest.raises(Exception) as raised:
        rig.sampler.execute(rig.state, call())
    assert raised.value.__class__.__name__ == "PromiseExpiredError"
    assert rig.seq_ids() == [0, 1, 2, 3]
    assert rig.time.sleeps == pytest.approx([0.5, 1.0, 2.0])


def test_sample_no_retries_turns_the_whole_call_layer_off() -> None:
    rig = Rig(sample_no_retries=True)
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", (410, b"{}"))
    with pytest.raises(Exception, match="410"):
        rig.sampler.execute(rig.state, call())
    assert rig.seq_ids() == [0]


def test_the_deadline_bounds_whole_call_retries() -> None:
    rig = Rig()
    rig.transport.on("asample", (503, b"{}"))
    with pytest.raises(APITimeoutError, match="Out of time retrying after: Error code: 503"):
        rig.sampler.execute(rig.state, call(deadline=rig.time.now + 2.5))
    assert rig.time.now <= 1000.0 + 2.5


def test_a_forgotten_sampling_session_is_recreated_once_and_the_call_goes_on() -> None:
    rig = Rig()
    rig.transport.on("asample", (400, {"detail": "unknown sampling session"}), promise_for_seq)
    rig.transport.on("samplers/sess-1:sample:0", (404, {"detail": "gone"}))
    rig.transport.on("session_heartbeat", (404, {"detail": "gone"}))
    rig.transport.on("create_session", {"session_id": "sess-2"})
    rig.transport.on("create_sampling_session", {"sampling_session_id": "sess-2:sample:0"})
    rig.transport.on("retrieve_future", result_bytes())
    # the session as the handshake left it, without starting its heartbeat thread
    rig.holder._info = SessionInfo(session_id="sess-1", client_config=rig.state.client_config,
                                   dynamic_config=rig.state.dynamic_config)
    rig.sampler.execute(rig.state, call())
    sent = rig.transport.calls_to("asample")
    assert [c.body["sampling_session_id"] for c in sent] == ["sess-1:sample:0", "sess-2:sample:0"]
    assert rig.target.current is not None and rig.target.current.session_id == "sess-2"


def test_a_404_poll_on_a_live_session_is_not_a_restart() -> None:
    rig = Rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", (404, {"detail": "no such request"}))
    rig.transport.on("samplers/sess-1:sample:0", {"base_model": "m"})
    with pytest.raises(NotFoundError):
        rig.sampler.execute(rig.state, call())
    assert rig.seq_ids() == [0]


def test_a_final_error_carries_no_wrapper_and_pickles() -> None:
    """The internal Final wrapper must not end up as the error's context (it holds the error: a
    cycle that made pickling the error recurse forever)."""
    import pickle

    rig = Rig()
    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", {"error": "quota", "category": "user"})
    with pytest.raises(RequestFailedError) as raised:
        rig.sampler.execute(rig.state, call())
    chain, seen = raised.value, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        assert type(chain).__name__ != "Final"
        chain = chain.__context__
    assert pickle.loads(pickle.dumps(raised.value)).request_id == raised.value.request_id


def forgetful_server(rig: Rig, sessions: int) -> None:
    """Every asample is refused as if the server had restarted; each recovery gets new ids."""
    rig.transport.on("asample", (400, {"detail": "unknown sampling session"}))
    rig.transport.on("session_heartbeat", (404, {"detail": "gone"}))
    rig.transport.on("create_session", *[{"session_id": f"sess-{n}"} for n in range(2, 2 + sessions)])
    rig.transport.on("create_sampling_session",
                     *[{"sampling_session_id": f"sess-{n}:sample:0"} for n in range(2, 2 + sessions)])
    for n in range(1, 2 + sessions):
        rig.transport.on(f"samplers/sess-{n}:sample:0", (404, {"detail": "gone"}))
    rig.holder._info = SessionInfo(session_id="sess-1", client_config=rig.state.client_config,
                                   dynamic_config=rig.state.dynamic_config)


def test_session_recovery_stops_after_three_per_call() -> None:
    """A server that forgets the session on every request is not chased forever."""
    rig = Rig()
    forgetful_server(rig, sessions=5)
    with pytest.raises(BadRequestError):
        rig.sampler.execute(rig.state, call())
    sent = [c.body["sampling_session_id"] for c in rig.transport.calls_to("asample")]
    assert sent == ["sess-1:sample:0", "sess-2:sample:0", "sess-3:sample:0", "sess-4:sample:0"]
    assert len(rig.transport.calls_to("create_sampling_session")) == MAX_SESSION_RECOVERIES


def test_a_failed_recovery_raises_the_original_error(caplog: pytest.LogCaptureFixture) -> None:
    rig = Rig()
    forgetful_server(rig, sessions=1)
    rig.transport._scripts["create_session"].clear()
    rig.transport.on("create_session", (403, {"detail": "no new sessions"}))
    with pytest.raises(BadRequestError, match="unknown sampling session"):
        rig.sampler.execute(rig.state, call())
    assert "Could not re-create the sampling session" in caplog.text and "no new sessions" in caplog.text
    assert len(rig.transport.calls_to("asample")) == 1


def test_a_result_in_the_asample_answer_needs_no_poll() -> None:
    rig = Rig()
    rig.transport.on("asample", {"sequences": [{"tokens": [3], "stop_reason": "length"}]})
    assert rig.sampler.execute(rig.state, call()).sequences[0].tokens == [3]
    assert rig.transport.calls_to("retrieve_future") == []


def slow_polls(rig: Rig, seconds: float) -> None:
    def try_again_later(_call: object) -> dict:
        rig.time.advance(seconds)
        return {"type": "try_again"}

    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", try_again_later, try_again_later, result_bytes())


def test_no_progress_for_the_progress_timeout_is_a_stuck_connection_error() -> None:
    rig = Rig(sample_no_retries=True)
    rig.state = rig.target.publish(attrs.evolve(rig.state, retry_config=RetryConfig(progress_timeout=60.0)))
    slow_polls(rig, 40.0)
    with pytest.raises(APIConnectionError, match=r"No progress made in 60\.0s"):
        rig.sampler.execute(rig.state, call())
    assert len(rig.transport.calls_to("retrieve_future")) == 2  # stuck found before the third poll


def test_stuck_detection_turned_off_by_the_server_lets_a_slow_call_finish() -> None:
    rig = Rig(sample_enable_stuck_detection=False)
    rig.state = rig.target.publish(attrs.evolve(rig.state, retry_config=RetryConfig(progress_timeout=60.0)))
    slow_polls(rig, 40.0)
    assert rig.sampler.execute(rig.state, call()).sequences[0].tokens == [7, 8, 9]


def test_a_poller_is_refused_once_the_pollers_are_closed() -> None:
    rig = Rig(sample_use_retrieve_futures=True)
    rig.sampler.close_pollers()
    with pytest.raises(ClientClosedError):
        rig.sampler.poller_for(rig.state)


def test_cancel_polling_at_close_stops_at_the_first_failure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex._sampling.call")
    rig = Rig()
    state = rig.target.publish(attrs.evolve(rig.state, dynamic_config=DynamicConfig(sample_cancel_enabled=True)))
    polling, release = threading.Semaphore(0), threading.Event()

    def held(_call: object) -> tuple:
        polling.release()
        release.wait(5)
        return result_bytes()

    rig.transport.on("asample", promise_for_seq)
    rig.transport.on("retrieve_future", held)
    rig.transport.on("cancel_future", (500, {"detail": "down"}))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(rig.sampler.execute, state, call()) for _ in range(2)]
        assert polling.acquire(timeout=5) and polling.acquire(timeout=5)
        assert rig.sampler.cancel_polling(state) == 0
        release.set()
        assert all(f.result(5).sequences for f in futures)
    (sent,) = rig.transport.calls_to("cancel_future")  # the second is not tried after the first failed
    assert sent.body["request_id"] == "req-0"
    assert "cancel_future for req-0 at close failed" in caplog.text
