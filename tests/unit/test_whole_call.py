"""The whole-call loop (protocol.md 7.1 layer 4, 7.3) over the in-memory transport.

One sample's complete path: asample (with same-seq_id resends) -> retrieve_future -> result,
and what happens when a layer below gives up.
"""

from __future__ import annotations

import attrs
import pytest

from tests.support.loops import Rig, call, promise_for_seq, result_bytes
from tinkex._policy import RetryConfig
from tinkex._session import SessionInfo
from tinkex.errors import APITimeoutError, ConflictError, NotFoundError, RequestFailedError


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
