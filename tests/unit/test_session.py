"""The session holder and the sampling target over the in-memory transport: the start-up
handshake (JWT exchange, the dynamic_config retry window, concurrent and closed starts), session
renewal, the heartbeat loop, the dynamic-config refresh, closing, the exit hook, and how a
sampling target creates, joins, describes and recovers its sampling session."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Iterator, List, Optional

import pytest

from tests.support.loops import KEY, snapshot
from tests.support.virtual_clock import VirtualClock
from tests.support.waiting import wait_until
from tinkex import _session
from tinkex._config import Config
from tinkex._http import FakeTransport
from tinkex._policy import PollPolicy, RetryConfig
from tinkex._sampling.target import CLONE_SEQ_STRIDE, SamplingTarget, TargetSpec
from tinkex._session import START_RETRY, Holder, SessionInfo
from tinkex.errors import (
    APIConnectionError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    TinkexError,
    ValidationError,
)
from tinkex.types import ClientConfig, DynamicConfig

HANDSHAKE = {"client/config": {}, "client/dynamic_config": {}, "create_session": {"session_id": "sess-1"},
             "sessions/sess-1/finish": {}}


class Seq(tuple):  # type: ignore[type-arg]
    """Several answers for one path, in order (a plain tuple is one ``(status, body)`` answer)."""

    __slots__ = ()

    def __new__(cls, *answers: Any) -> Seq:
        return super().__new__(cls, answers)


class Rig:
    """A Holder on a FakeTransport with virtual time; telemetry off unless asked for."""

    def __init__(self, telemetry_on: bool = False, heartbeat_interval: float = 10.0, **scripts: Any) -> None:
        self.time = VirtualClock()
        config = Config.from_env(api_key=KEY, base_url="http://fake.invalid", telemetry=telemetry_on, max_retries=0)
        self.transport = FakeTransport(config, clock=self.time.clock())
        for path, answers in {**HANDSHAKE, **scripts}.items():
            self.transport.on(path, *(answers if isinstance(answers, Seq) else (answers,)))
        self.holder = Holder(config, clock=self.time.clock(), transport=self.transport,
                             heartbeat_interval=heartbeat_interval)

    def paths(self) -> List[str]:
        return [call.path for call in self.transport.calls]


@pytest.fixture
def rigs() -> Iterator[List[Rig]]:
    made: List[Rig] = []
    yield made
    for rig in made:
        rig.holder.close(finish=False)


@pytest.fixture
def make(rigs: List[Rig]) -> Any:
    def build(**kwargs: Any) -> Rig:
        rig = Rig(**kwargs)
        rigs.append(rig)
        return rig

    return build


# ---------------------------------------------------------------------------------------------
# Start-up


def test_handshake_exchanges_a_jwt_when_the_server_enables_it(make: Any) -> None:
    rig = make(**{"client/config": {"pjwt_auth_enabled": True}, "auth/token": {"jwt": "eyJ.jwt.sig"}})
    assert rig.holder.start().session_id == "sess-1"
    assert rig.paths()[:3] == ["client/config", "auth/token", "client/dynamic_config"]
    assert rig.transport.calls_to("create_session")[0].headers["X-API-Key"] == "eyJ.jwt.sig"


@pytest.mark.parametrize("answer", [{}, {"jwt": ""}, {"jwt": 7}, ["eyJ.jwt.sig"]])
def test_an_auth_token_answer_without_a_jwt_fails_the_start(make: Any, answer: Any) -> None:
    rig = make(**{"client/config": {"pjwt_auth_enabled": True}, "auth/token": answer})
    with pytest.raises(TinkexError, match="without a jwt"):
        rig.holder.start()
    assert "create_session" not in rig.paths()


def test_dynamic_config_failures_are_retried_with_growing_delays(make: Any) -> None:
    rig = make(**{"client/dynamic_config": Seq((503, b""), APIConnectionError("refused", url="u"),
                                               {"refresh_interval_sec": 60.0})})
    info = rig.holder.start()
    assert info.dynamic_config == DynamicConfig(refresh_interval_sec=60.0)
    assert rig.time.sleeps == [START_RETRY.resend_delay(1), START_RETRY.resend_delay(2)]


def test_dynamic_config_404_means_the_defaults(make: Any) -> None:
    rig = make(**{"client/dynamic_config": (404, {"detail": "no such route"})})
    assert rig.holder.start().dynamic_config == DynamicConfig()


def test_a_dynamic_config_4xx_aborts_the_start_without_retrying(make: Any) -> None:
    rig = make(**{"client/dynamic_config": (422, {"detail": "bad sdk_version"})})
    with pytest.raises(TinkexError, match="bad sdk_version"):
        rig.holder.start()
    assert rig.time.sleeps == []


def test_dynamic_config_failures_give_up_when_the_retry_window_would_pass(make: Any) -> None:
    rig = make(**{"client/dynamic_config": (503, b"down")})
    with pytest.raises(InternalServerError):
        rig.holder.start()
    assert sum(rig.time.sleeps) <= START_RETRY.window
    assert sum(rig.time.sleeps) + START_RETRY.resend_delay(len(rig.time.sleeps) + 1) > START_RETRY.window
    assert rig.holder.closed is False  # a failed start leaves the holder usable: a later start tries again
    rig.transport.on("client/dynamic_config", {})
    assert rig.holder.start().session_id == "sess-1"


def test_closing_during_a_dynamic_config_retry_wait_stops_the_start(make: Any) -> None:
    rigs: List[Rig] = []

    def close_then_fail(_call: Any) -> Any:
        rigs[0].holder.close()
        return (503, b"")

    rig = make(**{"client/dynamic_config": close_then_fail})
    rigs.append(rig)
    with pytest.raises(ClientClosedError, match="start-up was stopped"):
        rig.holder.start()
    assert "create_session" not in rig.paths()


def test_create_session_messages_are_logged_at_their_levels(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = make(create_session={"session_id": "sess-1", "info_message": "welcome", "warning_message": "quota low",
                               "error_message": "model deprecated"})
    with caplog.at_level(logging.INFO, logger="tinkex._session"):
        rig.holder.start()
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tinkex._session"]
    assert (logging.INFO, "welcome") in logged
    assert (logging.WARNING, "quota low") in logged
    assert (logging.ERROR, "model deprecated") in logged


def test_start_after_the_session_exists_returns_it_without_a_new_handshake(make: Any) -> None:
    rig = make()
    first = rig.holder.start()
    assert rig.holder.start() is first
    assert rig.paths().count("create_session") == 1
    assert rig.holder.describe() == {"base_url": "http://fake.invalid", "session_id": "sess-1"}


def test_describe_before_start_has_no_session(make: Any) -> None:
    assert make().holder.describe() == {"base_url": "http://fake.invalid", "session_id": None}


def test_start_after_close_is_refused(make: Any) -> None:
    rig = make()
    rig.holder.close()
    assert rig.holder.closed
    with pytest.raises(ClientClosedError, match="is closed"):
        rig.holder.start()
    assert rig.paths() == []


def test_concurrent_starts_share_one_handshake(make: Any) -> None:
    gate = threading.Event()

    def slow_config(_call: Any) -> Any:
        assert gate.wait(10)
        return {}

    rig = make(**{"client/config": slow_config})
    results: List[SessionInfo] = []
    first = threading.Thread(target=lambda: results.append(rig.holder.start()))
    first.start()
    wait_until(lambda: rig.paths() == ["client/config"])
    pending = rig.holder._starting
    assert pending is not None
    second = threading.Thread(target=lambda: results.append(rig.holder.start()))
    second.start()
    # the second caller waits on the first one's handshake (a Condition waiter of its future)
    wait_until(lambda: len(pending._condition._waiters) == 1)  # type: ignore[attr-defined]
    gate.set()
    first.join(10)
    second.join(10)
    assert len(results) == 2 and results[0] is results[1]
    assert rig.paths().count("create_session") == 1


def test_a_close_during_the_handshake_wins_over_its_answer(make: Any) -> None:
    rigs: List[Rig] = []

    def close_then_answer(_call: Any) -> Any:
        rigs[0].holder.close()
        return {"session_id": "sess-late"}

    rig = make(create_session=close_then_answer)
    rigs.append(rig)
    with pytest.raises(ClientClosedError, match="closed during start-up"):
        rig.holder.start()
    assert rig.holder.describe()["session_id"] is None
    assert rig.holder._heartbeat is None  # no heartbeat for a session the caller never got


def test_a_close_before_the_handshake_pool_is_registered_stops_it_at_once(rigs: List[Rig],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    time = VirtualClock()
    config = Config.from_env(api_key=KEY, base_url="http://fake.invalid", telemetry=False)
    holder = Holder(config, clock=time.clock())  # owns its transport: the handshake gets a derived one
    handshake = FakeTransport(config, clock=time.clock())
    handshake.on("client/config", {})

    def derive_while_closing(*, pool_size: int) -> FakeTransport:
        holder.close()
        return handshake

    monkeypatch.setattr(holder.transport, "derive", derive_while_closing)
    with pytest.raises(ClientClosedError):
        holder.start()
    assert handshake.stop_event.is_set()  # closed, never asked
    assert handshake.calls == []


def test_abandon_start_is_a_no_op_without_a_derived_handshake(make: Any) -> None:
    rig = make()
    rig.holder.abandon_start()  # nothing running
    assert rig.holder.start().session_id == "sess-1"
    rig.holder.abandon_start()  # the session exists
    assert rig.holder.info.session_id == "sess-1"
    assert not rig.transport.stop_event.is_set()


def test_adopt_joins_an_existing_session_once(make: Any) -> None:
    rig = make()
    info = SessionInfo(session_id="sess-9", client_config=ClientConfig(sample_dispatch_bytes_semaphore_size=123),
                       dynamic_config=DynamicConfig())
    rig.holder.adopt(info)
    rig.holder.adopt(SessionInfo(session_id="sess-10", client_config=ClientConfig(), dynamic_config=DynamicConfig()))
    assert rig.holder.info is info
    assert rig.holder.owns_session is False
    assert rig.holder.limits.dispatch.bytes.capacity == 123
    assert rig.paths() == []


# ---------------------------------------------------------------------------------------------
# Renewal, heartbeat, dynamic config


def test_renew_session_after_close_is_refused(make: Any) -> None:
    rig = make()
    rig.holder.start()
    rig.holder.close(finish=False)
    with pytest.raises(ClientClosedError):
        rig.holder.renew_session("sess-1")


def test_renew_session_keeps_the_session_when_the_check_cannot_reach_the_server(make: Any) -> None:
    rig = make(session_heartbeat=APIConnectionError("refused", url="u"))
    rig.holder.start()
    assert rig.holder.renew_session("sess-1") == "sess-1"
    assert rig.paths().count("create_session") == 1


def test_renew_session_starts_a_new_session_when_the_server_forgot_it(make: Any) -> None:
    rig = make(session_heartbeat=(404, {"detail": "unknown session"}),
               create_session=Seq({"session_id": "sess-1"}, {"session_id": "sess-2"}))
    rig.holder.start()
    assert rig.holder.renew_session("sess-1") == "sess-2"
    assert rig.holder.renew_session("sess-1") == "sess-2"  # already renewed: no second session
    assert rig.paths().count("create_session") == 2


def test_heartbeat_loop_refreshes_dynamic_config_and_stops_when_the_session_finished(make: Any) -> None:
    rig = make(heartbeat_interval=0.001, **{"client/dynamic_config": Seq({}, {"refresh_interval_sec": 30.0})})
    seen: List[DynamicConfig] = []
    rig.holder.add_dynamic_config_listener(seen.append)

    def first_beat(_call: Any) -> Any:
        rig.time.advance(400.0)  # past the 300 s refresh interval
        return {}

    rig.transport.on("session_heartbeat", first_beat, (410, {"detail": "session finished"}))
    rig.holder.start()
    heartbeat = rig.holder._heartbeat
    assert heartbeat is not None
    heartbeat.join(10)
    assert not heartbeat.is_alive()
    assert seen == [DynamicConfig(refresh_interval_sec=30.0)]
    assert rig.holder.info.dynamic_config == DynamicConfig(refresh_interval_sec=30.0)
    assert rig.paths()[-3:] == ["session_heartbeat", "client/dynamic_config", "session_heartbeat"]


def test_a_heartbeat_failing_for_long_warns(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = make(session_heartbeat=(500, b"boom"))
    rig.holder.start()
    with caplog.at_level(logging.WARNING, logger="tinkex._session"):
        assert rig.holder._beat("sess-1", last_success=rig.time.now - 60.0) == "failed"
        assert caplog.records == []  # a minute of failures is not worth a warning yet
        assert rig.holder._beat("sess-1", last_success=rig.time.now - 200.0) == "failed"
    assert "heartbeat failed for 200 seconds for session sess-1" in caplog.text


def test_a_heartbeat_connection_failure_counts_as_failed(make: Any) -> None:
    rig = make(session_heartbeat=APIConnectionError("refused", url="u"))
    rig.holder.start()
    assert rig.holder._beat("sess-1", last_success=rig.time.now) == "failed"


def test_a_failed_dynamic_config_refresh_keeps_the_old_values(make: Any) -> None:
    rig = make(**{"client/dynamic_config": Seq({"refresh_interval_sec": 20.0}, (503, b""))})
    rig.holder.start()
    seen: List[DynamicConfig] = []
    rig.holder.add_dynamic_config_listener(seen.append)
    assert rig.holder._refresh_dynamic_config() == 20.0
    assert rig.holder.info.dynamic_config.refresh_interval_sec == 20.0
    assert seen == []


def test_an_unchanged_dynamic_config_notifies_nobody(make: Any) -> None:
    rig = make(**{"client/dynamic_config": {"refresh_interval_sec": 1.0}})
    rig.holder.start()
    seen: List[DynamicConfig] = []
    rig.holder.add_dynamic_config_listener(seen.append)
    assert rig.holder._refresh_dynamic_config() == _session.DYNAMIC_CONFIG_MIN_REFRESH  # never below the floor
    assert seen == []


# ---------------------------------------------------------------------------------------------
# Closing, telemetry, the exit hook


def test_report_exception_without_telemetry_sends_nothing(make: Any) -> None:
    rig = make()
    rig.holder.start()
    rig.holder.report_exception(RuntimeError("boom"))
    rig.holder.close()
    assert "telemetry" not in rig.paths()


def test_report_exception_with_telemetry_is_sent_on_close(make: Any) -> None:
    rig = make(telemetry_on=True, telemetry={})
    rig.holder.start()
    rig.holder.report_exception(RuntimeError("boom"))
    rig.holder.close()
    events = [event for call in rig.transport.calls_to("telemetry") for event in call.body["events"]]
    assert any("boom" in str(event) for event in events)


def test_a_session_that_cannot_be_finished_is_logged(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    rig = make(**{"sessions/sess-1/finish": APIConnectionError("refused", url="u")})
    rig.holder.start()
    with caplog.at_level(logging.WARNING, logger="tinkex._session"):
        rig.holder.close()
    assert "Could not finish session sess-1" in caplog.text
    assert len(rig.transport.calls_to("sessions/sess-1/finish")) == 3  # the call and its 2 retries
    rig.holder.close()  # idempotent: no second finish
    assert len(rig.transport.calls_to("sessions/sess-1/finish")) == 3


class _Exploding:
    closed = False

    def close(self) -> None:
        self.closed = True
        raise RuntimeError("close failed")


@contextlib.contextmanager
def only_live(*items: Any) -> Iterator[None]:
    """Make ``items`` the only clients and holders the exit hook knows, restoring the others after
    (clients of other tests, e.g. session-scoped fixtures, must not be closed here)."""
    holders, clients = list(_session._live_holders), list(_session._live_clients)
    _session._live_holders.clear()
    _session._live_clients.clear()
    for item in items:
        _session.register_for_exit(item)
    try:
        yield
    finally:
        for item in items:
            _session.unregister_for_exit(item)
        for item in holders + clients:
            _session.register_for_exit(item)


def test_close_all_closes_clients_then_holders_and_swallows_errors(make: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    rig = make()
    rig.holder.start()
    client = _Exploding()
    with only_live(client, rig.holder), caplog.at_level(logging.DEBUG, logger="tinkex._session"):
        _session.close_all()
    assert client.closed
    assert "closing a client at exit failed" in caplog.text
    assert rig.holder.closed
    finish = rig.transport.calls_to("sessions/sess-1/finish")
    assert [call.body["detail"] for call in finish] == ["the interpreter exited without close()"]


def test_a_forked_child_forgets_the_parents_clients(make: Any) -> None:
    rig = make()
    client = _Exploding()
    lock = _session._exit_lock
    with only_live(client, rig.holder):
        _session._forget_parents_clients()
        assert _session._exit_lock is not lock
        assert list(_session._live_holders) == [] and list(_session._live_clients) == []
        _session.close_all()  # the child closes nothing of the parent's
    assert not client.closed and not rig.holder.closed


# ---------------------------------------------------------------------------------------------
# The sampling target


def _target(rig: Rig, spec: TargetSpec) -> SamplingTarget:
    return SamplingTarget(rig.holder, spec, RetryConfig(), PollPolicy())


def test_a_target_needs_a_model_or_a_sampling_session() -> None:
    with pytest.raises(ValidationError, match="model_path or base_model"):
        TargetSpec()
    with pytest.raises(ValidationError, match="tinker://"):
        TargetSpec(model_path="s3://bucket/ckpt")
    assert TargetSpec(sampling_session_id="sess-1:sample:0").base_model is None


def test_resolve_creates_a_sampling_session_and_follows_dynamic_config(make: Any) -> None:
    rig = make(create_sampling_session={"sampling_session_id": "sess-1:sample:0"})
    target = _target(rig, TargetSpec(base_model="m"))
    state, first_seq = target.resolve(clone=False)
    assert (state.sampling_session_id, state.base_model, first_seq) == ("sess-1:sample:0", "m", 0)
    assert rig.transport.calls_to("create_sampling_session")[0].body["sampling_session_seq_id"] == 0
    target.on_dynamic_config(DynamicConfig(sample_cancel_enabled=True))
    assert target.current is not None and target.current.dynamic_config.sample_cancel_enabled


def test_dynamic_config_and_stream_flags_before_resolve_publish_nothing(make: Any) -> None:
    target = _target(make(), TargetSpec(base_model="m"))
    target.on_dynamic_config(DynamicConfig(sample_cancel_enabled=True))
    target.mark_stream_unsupported()
    assert target.current is None


def test_a_clone_joins_the_sampling_session_when_the_server_counts_clients(make: Any) -> None:
    rig = make(**{"client/config": {"sample_join_sampling_session": True},
                  "join_sampling_session": {"client_counter": 3},
                  "samplers/sess-1:sample:0": {"sampler_id": "s", "base_model": "org/m", "tokenizer_id": "tok"}})
    state, first_seq = _target(rig, TargetSpec(sampling_session_id="sess-1:sample:0")).resolve(clone=True)
    assert first_seq == 3 * CLONE_SEQ_STRIDE
    assert (state.base_model, state.tokenizer_id) == ("org/m", "tok")
    assert rig.transport.calls_to("join_sampling_session")[0].body["sampling_session_id"] == "sess-1:sample:0"


def test_a_clone_without_join_support_picks_a_random_clone_id(make: Any) -> None:
    rig = make(**{"samplers/sess-1:sample:0": {"sampler_id": "s", "base_model": "org/m"}})
    _state, first_seq = _target(rig, TargetSpec(sampling_session_id="sess-1:sample:0")).resolve(clone=True)
    assert first_seq % CLONE_SEQ_STRIDE == 0 and 1 <= first_seq // CLONE_SEQ_STRIDE < CLONE_SEQ_STRIDE
    assert "join_sampling_session" not in rig.paths()


def test_a_join_answer_with_a_counter_below_one_is_an_error(make: Any) -> None:
    rig = make(**{"client/config": {"sample_join_sampling_session": True},
                  "join_sampling_session": {"client_counter": 0}})
    with pytest.raises(TinkexError, match="client_counter=0"):
        _target(rig, TargetSpec(sampling_session_id="sess-1:sample:0", base_model="m")).resolve(clone=True)


def test_a_sampler_that_cannot_be_described_falls_back_to_the_given_base_model(make: Any) -> None:
    rig = make(**{"samplers/sess-1:sample:0": (500, b"down")})
    state, _ = _target(rig, TargetSpec(sampling_session_id="sess-1:sample:0", base_model="m")).resolve(clone=False)
    assert (state.base_model, state.tokenizer_id) == ("m", None)


def test_a_sampler_that_cannot_be_described_without_a_base_model_fails(make: Any) -> None:
    rig = make(**{"samplers/sess-1:sample:0": (404, {"detail": "no sampler"})})
    with pytest.raises(NotFoundError):
        _target(rig, TargetSpec(sampling_session_id="sess-1:sample:0")).resolve(clone=False)


def _published(rig: Rig, spec: TargetSpec) -> SamplingTarget:
    rig.holder.start()
    target = _target(rig, spec)
    target.publish(snapshot())
    return target


def test_recover_gives_up_when_the_sampler_check_fails_otherwise(make: Any) -> None:
    rig = make(**{"samplers/sess-1:sample:0": (500, b"down")})
    target = _published(rig, TargetSpec(base_model="m"))
    stale: Optional[Any] = target.current
    assert target.recover(stale, closed=False) is None
    assert "create_sampling_session" not in rig.paths()


def test_recover_starts_new_sessions_after_a_server_restart(make: Any) -> None:
    rig = make(**{"samplers/sess-1:sample:0": (404, {"detail": "unknown"}),
                  "session_heartbeat": (404, {"detail": "unknown"}),
                  "create_session": Seq({"session_id": "sess-1"}, {"session_id": "sess-2"}),
                  "create_sampling_session": {"sampling_session_id": "sess-2:sample:0"}})
    target = _published(rig, TargetSpec(base_model="m"))
    stale = target.current
    assert stale is not None
    fresh = target.recover(stale, closed=False)
    assert fresh is not None and (fresh.session_id, fresh.sampling_session_id) == ("sess-2", "sess-2:sample:0")
    assert target.recover(stale, closed=False) is fresh  # a second caller gets the newer snapshot
