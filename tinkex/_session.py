"""The per-ServiceClient session: start-up handshake, shared limits, heartbeat, finish, exit hook.

One :class:`Holder` per ServiceClient (the official SDK's "holder"): it owns the transport,
the session id, the dispatch/backoff/response-byte limits shared by its sampling clients,
the heartbeat thread and the telemetry reporter.

Interpreter exit: ``concurrent.futures`` joins its worker threads at exit, and a worker
blocked in a long poll would hold the interpreter until the poll returns; a session nobody
finished keeps its queued generations running on the server until it expires. So an exit
hook that runs first (hooks run last-registered first) closes every live sampling client
(aborting blocked reads, cancelling pending work where the server enables it), then finishes
every live session, each step bounded in time.
"""

from __future__ import annotations

import concurrent.futures.thread  # noqa: F401  (registers its exit hook before ours)
import functools
import itertools
import logging
import os
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional

import attrs

from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config, __version__, redact_error
from ._http.transport import Transport
from ._limits import SessionLimits
from ._policy import Action, Phase, SubmitPolicy, classify
from .errors import APIConnectionError, APIError, APIStatusError, ClientClosedError, NotFoundError, TinkexError
from .telemetry import TelemetryReporter
from .types import (
    ClientConfig,
    CreateSessionRequest,
    CreateSessionResponse,
    DynamicConfig,
    FinishSessionRequest,
    SessionHeartbeatRequest,
)

__all__ = ["Holder", "SessionInfo", "HEARTBEAT_INTERVAL", "register_for_exit", "unregister_for_exit", "close_all"]

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_WARN_AFTER = 120.0
DYNAMIC_CONFIG_MIN_REFRESH = 10.0
FINISH_TIMEOUT = 10.0  # how long close() spends finishing the session on the server
EXIT_FINISH_TIMEOUT = 3.0  # the same at interpreter exit, where a dead server must not hold the process
#: The generic holder retry (protocol.md 7.1 layer 2) around the initial dynamic_config fetch.
START_RETRY = SubmitPolicy()


@attrs.frozen
class SessionInfo:
    """What the handshake learned; replaced whole, never mutated."""

    session_id: str
    client_config: ClientConfig
    dynamic_config: DynamicConfig


class Holder:
    """Owns one session with the service and everything its sampling clients share.

    Thread-safety: safe to share between threads; ``start`` runs the handshake once under a
    lock, the session info is published by one reference assignment, and the heartbeat runs
    on a daemon thread that ``close()`` stops and joins.
    """

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock = SYSTEM_CLOCK,
        pool_size: int = 128,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        user_metadata: Optional[Dict[str, Any]] = None,
        transport: Optional[Transport] = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.transport = transport or Transport(config, pool_size=pool_size, clock=clock)
        self.stop_event = self.transport.stop_event
        self.limits = SessionLimits(clock)
        self._heartbeat_interval = heartbeat_interval
        self._user_metadata = dict(user_metadata or config.user_metadata)
        self._lock = threading.Lock()  # guards _info, _starting, _closed and _listeners; never held over I/O
        self._starting: Optional[Future[SessionInfo]] = None  # the handshake in progress, if any
        self._info: Optional[SessionInfo] = None
        self._sampling_seq = itertools.count()
        self._heartbeat: Optional[threading.Thread] = None
        self._listeners: List[Callable[[DynamicConfig], None]] = []
        self.reporter: Optional[TelemetryReporter] = None
        self._closed = False
        self._quiet = False  # set by close(quiet=True) at exit
        self.owns_session = True  # False for an adopted session (an unpickled clone): never finished here
        self._owns_transport = transport is None  # an injected transport (a test's fake) is never derived
        self._handshake_transport: Optional[Transport] = None  # the running handshake's own pool; guarded by _lock
        register_for_exit(self)

    @property
    def info(self) -> SessionInfo:
        """The session, starting it on first use."""
        info = self._info
        return info if info is not None else self.start()

    def start(self) -> SessionInfo:
        """Run the handshake once: client/config, dynamic_config, create_session.

        Concurrent callers wait for the one handshake in progress. The lock is never held over
        the handshake's I/O, so :meth:`close` can always stop it: closing aborts its calls and
        retry waits at once, and the callers get :class:`ClientClosedError`.
        """
        with self._lock:
            if self._closed:
                raise ClientClosedError("the ServiceClient is closed")
            if self._info is not None:
                return self._info
            starter = self._starting is None
            if starter:
                self._starting = Future()
            pending = self._starting
        assert pending is not None
        return self._run_handshake(pending) if starter else pending.result()

    def _run_handshake(self, pending: Future[SessionInfo]) -> SessionInfo:
        transport = self._open_handshake_transport()
        try:
            info = self._handshake(transport)
            with self._lock:
                if self._closed:
                    raise ClientClosedError("the ServiceClient was closed during start-up")
                self._info = info
                self._start_background()
        except BaseException as exc:
            if (self._closed or transport.stop_event.is_set()) and not isinstance(exc, ClientClosedError):
                exc = ClientClosedError(f"the ServiceClient's start-up was stopped ({exc})")
            redact_error(exc, self.config.api_key)  # a handshake answer may quote the key back
            self._end_handshake(transport, pending)
            pending.set_exception(exc)
            raise exc from None
        self._end_handshake(transport, pending)
        pending.set_result(info)
        return info

    def _open_handshake_transport(self) -> Transport:
        """The handshake's own pool and stop event, so :meth:`abandon_start` can stop it alone."""
        transport = self.transport.derive(pool_size=2) if self._owns_transport else self.transport
        with self._lock:
            self._handshake_transport = transport
            closed = self._closed
        if closed:
            transport.close()
        return transport

    def _end_handshake(self, transport: Transport, pending: Future[SessionInfo]) -> None:
        with self._lock:
            if self._starting is pending:  # (abandon_start may have made way for a newer one)
                self._starting = None  # a later call may try again, or finds _info set
            if self._handshake_transport is transport:
                self._handshake_transport = None
        if transport is not self.transport:
            transport.close()

    def abandon_start(self) -> None:
        """Stop a handshake in progress (its caller gave up waiting); a later :meth:`start` begins anew.

        Everything waiting for that handshake gets :class:`ClientClosedError`. A no-op once the
        session exists, or when the transport was injected.
        """
        with self._lock:
            transport = self._handshake_transport if self._info is None else None
            if transport is None or transport is self.transport:
                return
            self._starting = self._handshake_transport = None  # the next start() does not join this one
        transport.close()

    def adopt(self, info: SessionInfo) -> None:
        """Join an existing session (an unpickled client): no create_session, own heartbeat."""
        with self._lock:
            self.owns_session = False
            if self._info is None:
                self._configure_limits(info.client_config)
                self._info = info
                self._start_background()

    def _handshake(self, transport: Transport) -> SessionInfo:
        client_config = ClientConfig.from_json(
            transport.request("POST", "client/config", body={"sdk_version": __version__}).json("client/config")
        )
        if client_config.pjwt_auth_enabled:
            self._exchange_jwt(transport)
        dynamic = self._fetch_dynamic_config_at_start(transport)
        self._configure_limits(client_config)
        session_id = self._create_session(transport)
        logger.info("Session %s created on %s", session_id, self.config.base_url)
        return SessionInfo(session_id=session_id, client_config=client_config, dynamic_config=dynamic)

    def _exchange_jwt(self, transport: Transport) -> None:
        answer = transport.request("POST", "auth/token", body={}).json("auth/token")
        jwt = answer.get("jwt") if isinstance(answer, dict) else None
        if not isinstance(jwt, str) or not jwt:
            raise TinkexError("auth/token answered without a jwt")
        transport.set_credential(jwt)
        self.transport.set_credential(jwt)

    def _fetch_dynamic_config_at_start(self, transport: Transport) -> DynamicConfig:
        """The initial fetch, inside the generic holder retry (protocol.md 4.2, 7.1 layer 2).

        Timeouts, connection errors, 408/409/429 and 5xx are tried again after 1, 2, 4 ... s
        within ``START_RETRY.window``; 404 means "use the defaults"; anything else aborts.
        """
        started, failures = self.clock.monotonic(), 0
        while True:
            try:
                return self._fetch_dynamic_config(transport)
            except APIStatusError as exc:
                if classify(Phase.SUBMIT, exc.status_code) not in (Action.RETRY, Action.BACKOFF):
                    raise
                error: TinkexError = exc
            except APIConnectionError as exc:
                error = exc
            failures += 1
            delay = START_RETRY.resend_delay(failures)
            if self.clock.monotonic() + delay - started > START_RETRY.window:
                raise error
            logger.debug("client/dynamic_config failed (%s); trying again in %.0f s", error, delay)
            if self.clock.sleep(delay, transport.stop_event):
                raise ClientClosedError("the ServiceClient's start-up was stopped") from error

    def _fetch_dynamic_config(self, transport: Optional[Transport] = None) -> DynamicConfig:
        try:
            answer = (transport or self.transport).request(
                "POST", "client/dynamic_config", body={"sdk_version": __version__}, read_timeout=10.0, max_retries=0
            )
        except NotFoundError:
            return DynamicConfig()
        dynamic: DynamicConfig = DynamicConfig.from_json(answer.json("client/dynamic_config"))
        return dynamic

    def _configure_limits(self, client_config: ClientConfig) -> None:
        self.limits.configure(dispatch_bytes=client_config.sample_dispatch_bytes_semaphore_size,
                              response_bytes=client_config.inflight_response_bytes_semaphore_size)

    def _create_session(self, transport: Optional[Transport] = None) -> str:
        request = CreateSessionRequest(
            tags=list(self.config.tags), user_metadata=self._user_metadata, sdk_version=__version__,
            project_id=self.config.project_id, display_name=self.config.display_name,
        )
        answer = CreateSessionResponse.from_json(
            (transport or self.transport).request("POST", "create_session", body=request).json("create_session")
        )
        for level, message in ((logging.INFO, answer.info_message), (logging.WARNING, answer.warning_message),
                               (logging.ERROR, answer.error_message)):
            if message:
                logger.log(level, "%s", message)
        return str(answer.session_id)

    def renew_session(self, stale_session_id: str) -> str:
        """Start a new session if the server no longer knows ``stale_session_id`` (it restarted);
        returns the session id to use now."""
        with self._lock:
            if self._closed:
                raise ClientClosedError("the ServiceClient is closed")
            info = self._info
            assert info is not None
            if info.session_id == stale_session_id and self._session_forgotten(stale_session_id):
                self._info = info = attrs.evolve(info, session_id=self._create_session())
                logger.warning("The server no longer knows session %s; started session %s", stale_session_id,
                               info.session_id)
            return info.session_id

    def _session_forgotten(self, session_id: str) -> bool:
        try:
            self.transport.request("POST", "session_heartbeat", body=SessionHeartbeatRequest(session_id=session_id),
                                   read_timeout=10.0, max_retries=2)
        except APIStatusError as exc:
            return classify(Phase.SESSION_CHECK, exc.status_code) is Action.FORGOTTEN
        except APIError:
            return False
        return False

    def next_sampling_session_seq_id(self) -> int:
        return next(self._sampling_seq)

    def add_dynamic_config_listener(self, listener: Callable[[DynamicConfig], None]) -> None:
        with self._lock:
            self._listeners.append(listener)

    def _start_background(self) -> None:
        info = self._info
        assert info is not None
        if self.config.telemetry:
            self.reporter = TelemetryReporter(
                self._send_telemetry, session_id=info.session_id, sdk_version=__version__, clock=self.clock,
                secrets=(self.config.api_key,),
            )
            self.reporter.session_start()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"tinkex-heartbeat-{info.session_id}", daemon=True
        )
        self._heartbeat.start()

    def _send_telemetry(self, payload: Dict[str, Any]) -> None:
        retries = 0 if self._quiet else 1  # at exit: one try, no retry warnings on the way out
        self.transport.request("POST", "telemetry", body=payload, read_timeout=5.0, max_retries=retries)

    def _heartbeat_loop(self) -> None:
        info = self._info
        assert info is not None
        last_success = self.clock.monotonic()
        next_refresh = last_success + max(info.dynamic_config.refresh_interval_sec, DYNAMIC_CONFIG_MIN_REFRESH)
        while not self.stop_event.wait(self._heartbeat_interval):
            outcome = self._beat(self.info.session_id, last_success)  # renew_session may replace it
            if outcome == "finished":
                return
            if outcome == "ok":
                last_success = self.clock.monotonic()
            if self.clock.monotonic() >= next_refresh:
                next_refresh = self.clock.monotonic() + self._refresh_dynamic_config()

    def _beat(self, session_id: str, last_success: float) -> str:
        try:
            self.transport.request(
                "POST", "session_heartbeat", body=SessionHeartbeatRequest(session_id=session_id),
                read_timeout=10.0, max_retries=0,
            )
            return "ok"
        except APIStatusError as exc:
            if classify(Phase.HEARTBEAT, exc.status_code) is Action.STOP:
                logger.info("Session %s has finished; stopping its heartbeat loop.", session_id)
                return "finished"
            self._warn_heartbeat(session_id, last_success, exc)
        except APIError as exc:
            self._warn_heartbeat(session_id, last_success, exc)
        return "failed"

    def _warn_heartbeat(self, session_id: str, last_success: float, exc: Exception) -> None:
        silent_for = self.clock.monotonic() - last_success
        if silent_for > HEARTBEAT_WARN_AFTER:
            logger.warning(
                "Session heartbeat failed for %.0f seconds for session %s. Last exception: %s: %s. "
                "Your connection may be unreliable or Tinker is down. If this persists, the session "
                "will be terminated.", silent_for, session_id, type(exc).__name__, exc,
            )

    def _refresh_dynamic_config(self) -> float:
        info = self._info
        assert info is not None
        try:
            dynamic = self._fetch_dynamic_config()
        except TinkexError as exc:
            logger.debug("dynamic_config refresh failed, keeping the old values: %s", exc)
            return max(info.dynamic_config.refresh_interval_sec, DYNAMIC_CONFIG_MIN_REFRESH)
        if dynamic != info.dynamic_config:
            self._info = attrs.evolve(info, dynamic_config=dynamic)
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener(dynamic)
        return max(dynamic.refresh_interval_sec, DYNAMIC_CONFIG_MIN_REFRESH)

    def close(self, reason: str = "success", detail: Optional[str] = None, *, finish: bool = True,
              finish_timeout: float = FINISH_TIMEOUT, quiet: bool = False) -> None:
        """Finish the session, stop the heartbeat and telemetry, close the pool; idempotent.

        A handshake still running is aborted at once (its waiters get
        :class:`ClientClosedError`); finishing the session takes at most ``finish_timeout`` s,
        and a failure to finish is logged at WARNING (DEBUG when ``quiet``, as at exit).
        """
        with self._lock:
            if self._closed:
                return
            self._closed, self._quiet = True, quiet
            info, handshake = self._info, self._handshake_transport
        if handshake is not None:
            handshake.close()  # aborts its blocked reads and retry waits
        if info is not None and finish:
            self._finish(info.session_id, reason, detail, finish_timeout, quiet)
        if self.reporter is not None:
            self.reporter.close()
        self.transport.close()  # also sets stop_event and aborts a heartbeat blocked in a read
        self.wake_waiters()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join(timeout=15.0)
        unregister_for_exit(self)

    def wake_waiters(self) -> None:
        """Make every call queued on the shared limits re-check its stop event now."""
        self.limits.wake_waiters()

    def report_exception(self, exc: BaseException) -> None:
        """Send ``exc`` to telemetry, when telemetry is on."""
        reporter = self.reporter
        if reporter is not None:
            reporter.exception(exc)

    def _finish(self, session_id: str, reason: str, detail: Optional[str], timeout: float, quiet: bool) -> None:
        try:
            self.transport.request(
                "POST", f"sessions/{session_id}/finish", body=FinishSessionRequest(reason=reason, detail=detail),
                max_retries=0 if quiet else 2, read_timeout=timeout, deadline=self.clock.monotonic() + timeout,
            )
        except TinkexError as exc:
            # At exit the server is often gone already, and the log's streams may be closed.
            logger.log(logging.DEBUG if quiet else logging.WARNING, "Could not finish session %s: %s", session_id, exc)

    @property
    def closed(self) -> bool:
        return self._closed

    def describe(self) -> Any:
        return {"base_url": self.config.base_url, "session_id": self._info.session_id if self._info else None}


# -- interpreter exit ----------------------------------------------------------------------------

_live_clients: weakref.WeakSet[Any] = weakref.WeakSet()
_live_holders: weakref.WeakSet[Holder] = weakref.WeakSet()
_exit_lock = threading.Lock()  # guards both sets against concurrent register/close_all


def register_for_exit(client: Any) -> None:
    """Close ``client`` (a SamplingClient, or a :class:`Holder`) at interpreter exit unless closed before."""
    with _exit_lock:
        (_live_holders if isinstance(client, Holder) else _live_clients).add(client)


def unregister_for_exit(client: Any) -> None:
    with _exit_lock:
        (_live_holders if isinstance(client, Holder) else _live_clients).discard(client)


def close_all() -> None:
    """Close every live client, then finish every live session; errors are logged, never raised.

    Runs at exit. Clients go first: closing one cancels its pending futures, tells the server to
    drop requests still being polled (when its dynamic config enables ``cancel_future``) and
    aborts blocked reads. Then each session is finished (the server ends its queued work), each
    within ``EXIT_FINISH_TIMEOUT`` seconds.
    """
    with _exit_lock:
        clients, holders = list(_live_clients), list(_live_holders)
    for client in clients:
        _quietly(client.close)
    for holder in holders:
        _quietly(functools.partial(holder.close, "success", "the interpreter exited without close()",
                                   finish=holder.owns_session, finish_timeout=EXIT_FINISH_TIMEOUT, quiet=True))


def _quietly(close: Callable[[], None]) -> None:
    try:
        close()
    except Exception:
        logger.debug("closing a client at exit failed", exc_info=True)


def _forget_parents_clients() -> None:
    """In a forked child: the parent's clients and sessions are the parent's to close and finish."""
    global _exit_lock
    _exit_lock = threading.Lock()  # another parent thread may have held it at the fork
    _live_clients.clear()
    _live_holders.clear()


def _install_exit_hook() -> None:
    if hasattr(os, "register_at_fork"):  # pragma: no branch - always true on POSIX; false only on Windows
        os.register_at_fork(after_in_child=_forget_parents_clients)
    register_hook = getattr(threading, "_register_atexit", None)
    if register_hook is not None:
        register_hook(close_all)
    else:  # pragma: no cover - very old interpreters
        import atexit

        atexit.register(close_all)


_install_exit_hook()
