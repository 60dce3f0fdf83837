"""The server's operations, independent of HTTP: sessions, sample submission, cancel, expiry.

Route handlers decode nothing themselves: they hand the decoded JSON body and the caller's
principal to an :class:`Engine` method and send back what it returns. Bad input raises
``DecodeError`` / ``Problem`` naming the field, which the error middleware answers as JSON.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..types import (
    ClientConfig,
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    CreateSessionRequest,
    CreateSessionResponse,
    DynamicConfig,
    FinishSessionRequest,
    GetSamplerResponse,
    JoinSamplingSessionRequest,
    JoinSamplingSessionResponse,
    SampleRequest,
    ServerCapabilities,
    SessionHeartbeatRequest,
    SupportedModel,
)
from ._auth import Authenticator
from ._plan import plan_request
from ._problems import bad_request, too_many
from ._settings import ServerSettings
from ._stats import Stats
from .faults import FaultInjector, FaultProfile
from .models import LanguageModel
from .scheduler import Scheduler
from .store import EXPIRED, FINISHED, QUEUED, RUNNING, RequestRecord, SamplingSession, Store

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

MODEL_PATH_PREFIX = "tinker://"


class Engine:
    """All server state and operations. Not thread-safe: use only on the server's event loop.

    Args:
        settings: the server's settings.
        models: the served models by name.
        loop: the event loop the engine lives on.
        executor: the generation worker pool.
        faults: the initial fault profile.
        clock: monotonic seconds (expiry, pause windows).
    """

    def __init__(
        self,
        settings: ServerSettings,
        models: Mapping[str, LanguageModel],
        *,
        loop: asyncio.AbstractEventLoop,
        executor: Executor,
        faults: Optional[FaultProfile] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.models = dict(models)
        self.clock = clock
        self.stats = Stats()
        self.store = Store(settings, clock)
        wall_start, clock_start = time.time(), clock()
        self.auth = Authenticator(settings, clock=lambda: wall_start + clock() - clock_start)
        self.faults = FaultInjector(faults or FaultProfile(), clock)
        self.scheduler = Scheduler(
            loop=loop,
            executor=executor,
            max_concurrent=settings.max_concurrent_generations,
            store=self.store,
            stats=self.stats,
            token_delay_s=settings.token_delay_s,
            inline_cheap=settings.inline_cheap_models,
            inline_max_tokens=settings.inline_max_tokens,
        )

    # configuration ------------------------------------------------------------------------

    def client_config(self) -> Dict[str, Any]:
        flags = ClientConfig().to_json()
        flags["pjwt_auth_enabled"] = self.settings.jwt_enabled
        flags.update(self.settings.client_config)
        return flags

    def dynamic_config(self) -> Dict[str, Any]:
        flags = DynamicConfig().to_json()
        flags.update(self.settings.dynamic_config)
        return flags

    def capabilities(self) -> Dict[str, Any]:
        models = [
            SupportedModel(
                model_name=name, max_context_length=model.max_context_length, trainable=False, sampleable=True,
                tokenizer_id=model.tokenizer_id,
            )  # fmt: skip
            for name, model in self.models.items()
        ]
        return ServerCapabilities(supported_models=models).to_json()

    def set_faults(self, profile: FaultProfile) -> None:
        """Replace the fault profile; pause windows count from now, the dice restart from the seed."""
        self.faults = FaultInjector(profile, self.clock)
        logger.info("fault profile set: %s", profile.to_spec() if not profile.is_empty else "none")

    # sessions -----------------------------------------------------------------------------

    def create_session(self, owner: str, body: Any) -> Dict[str, Any]:
        request = CreateSessionRequest.from_json(body)
        limit = self.settings.max_sessions_per_key
        if self.store.active_sessions[owner] >= limit:
            raise too_many(
                f"this API key already has {limit} active sessions; finish some (sessions/{{id}}/finish) "
                "or let them expire before creating more"
            )
        info = {"tags": list(request.tags), "sdk_version": request.sdk_version, "project_id": request.project_id}
        session = self.store.new_session(owner, info)
        self.stats.count("sessions_created")
        return CreateSessionResponse(session_id=session.session_id, type="create_session").to_json()

    def heartbeat(self, owner: str, body: Any) -> Dict[str, Any]:
        request = SessionHeartbeatRequest.from_json(body)
        self.store.live_session(owner, request.session_id)
        self.stats.count("heartbeats")
        return {"type": "session_heartbeat"}

    def finish_session(self, owner: str, session_id: str, body: Any) -> Dict[str, Any]:
        request = FinishSessionRequest.from_json(body) if body else FinishSessionRequest()
        session = self.store.session(owner, session_id)
        if session.is_active:
            self._end(self.store.end_session(session, FINISHED, request.reason), "its session was finished")
            self.stats.count("sessions_finished")
        return {}

    def _end(self, records: List[RequestRecord], reason: str) -> None:
        for record in records:
            if self.scheduler.cancel(record, reason):
                self.stats.count("cancels_by_session_end")
        self.stats.count("promises_expired", len(records))

    def create_sampling_session(self, owner: str, body: Any) -> Dict[str, Any]:
        request = CreateSamplingSessionRequest.from_json(body)
        if request.sampling_session_seq_id < 0:
            raise bad_request(f"sampling_session_seq_id must be >= 0, got {request.sampling_session_seq_id}")
        name = self.model_name(request.base_model, request.model_path)
        sampler = self.store.new_sampling_session(
            owner, request.session_id, request.sampling_session_seq_id, name, request.model_path
        )
        sampler_id = sampler.sampling_session_id
        return CreateSamplingSessionResponse(sampling_session_id=sampler_id, type="create_sampling_session").to_json()

    def get_sampler(self, owner: str, sampling_session_id: str) -> Dict[str, Any]:
        sampler = self.store.sampling_session(owner, sampling_session_id)
        answer = GetSamplerResponse(
            sampler_id=sampler.sampling_session_id,
            base_model=sampler.base_model,
            model_path=sampler.model_path,
            tokenizer_id=self.models[sampler.base_model].tokenizer_id,
        ).to_json()
        answer.setdefault("model_path", None)  # protocol 4.7: the service sends null rather than leaving it out
        return answer

    def join(self, owner: str, body: Any) -> Dict[str, Any]:
        request = JoinSamplingSessionRequest.from_json(body)
        sampler = self.store.sampling_session(owner, request.sampling_session_id)
        self.store.live_session(owner, sampler.session.session_id)
        sampler.clients += 1
        return JoinSamplingSessionResponse(client_counter=sampler.clients, type="join_sampling_session").to_json()

    def model_name(self, base_model: Optional[str], model_path: Optional[str]) -> str:
        """The served model a request names, by ``base_model`` or ``tinker://<model name>``."""
        if base_model is not None:
            if base_model not in self.models:
                raise bad_request(f"unknown base_model {base_model!r}; available: {', '.join(self.models)}")
            return base_model
        if model_path is not None:
            name = model_path[len(MODEL_PATH_PREFIX) :] if model_path.startswith(MODEL_PATH_PREFIX) else None
            if name not in self.models:
                raise bad_request(
                    f"unknown model_path {model_path!r}: this server has no trained weights; "
                    f"use tinker://<model name> with one of {', '.join(self.models)}"
                )
            return str(name)
        raise bad_request("one of base_model or model_path is required")

    # sampling -----------------------------------------------------------------------------

    def submit(self, owner: str, body: Any, *, streaming: bool = False) -> Tuple[RequestRecord, bool]:
        """Accept a sample request: ``(record, created)``; a repeated (sampling session, seq_id) is
        the same request and is never generated twice.

        Raises:
            DecodeError, Problem: 400 naming the problem; 429 over the session's pending limit.
        """
        request = SampleRequest.from_json(body)
        sampler = self._sampler(owner, request)
        pair = (request.sampling_session_id, request.seq_id) if sampler and request.seq_id is not None else None
        previous = self._existing(pair)
        if previous is not None and not (streaming and previous.aborted_by_stream):
            return previous, False
        name = sampler.base_model if sampler else self.model_name(request.base_model, request.model_path)
        if sampler is not None:
            self._check_pending(sampler)
        plan = plan_request(request, self.models[name], self.settings)
        self._check_pending_work(owner, plan.work_tokens)
        record = RequestRecord(
            owner=owner,
            session=sampler.session if sampler else None,
            sampling_session_id=request.sampling_session_id if sampler else None,
            seq_id=request.seq_id,
            plan=plan,
            model_name=name,
            num_samples=request.num_samples,
            now=self.clock(),
            streaming=streaming,
            generations=previous.generations if previous is not None else 0,
            work=plan.work_tokens,
        )
        if previous is not None:
            self.store.replace_pair(previous, record)
        else:
            self.store.add_record(record)
        self.scheduler.submit(record)
        return record, True

    def _sampler(self, owner: str, request: SampleRequest) -> Optional[SamplingSession]:
        if request.sampling_session_id is None:
            return None
        return self.store.sampler_for_request(owner, request.sampling_session_id)

    def _existing(self, pair: Optional[Tuple[Any, int]]) -> Optional[RequestRecord]:
        if pair is None:
            return None
        request_id = self.store.find_pair(pair)
        return None if request_id is None else self.store.peek_record(request_id)

    def _check_pending(self, sampler: SamplingSession) -> None:
        limit = self.settings.session_pending_limit
        if sampler.session.pending >= limit:
            raise too_many(
                f"session {sampler.session.session_id!r} already has {limit} unfinished requests",
                queue_state="paused_rate_limit",
                queue_state_reason=f"per-session limit of {limit} unfinished requests reached",
            )

    def _check_pending_work(self, owner: str, work: int) -> None:
        """429 when this key's unfinished requests already hold its token budget (a key with
        nothing pending is always admitted, so a request under the per-request cap never waits forever)."""
        pending, limit = self.store.pending_work[owner], self.settings.max_pending_tokens_per_key
        if pending and pending + work > limit:
            raise too_many(
                f"this API key's unfinished requests already ask for {pending} tokens; {work} more would exceed "
                f"the limit of {limit}",
                queue_state="paused_rate_limit",
                queue_state_reason=f"per-key limit of {limit} pending tokens reached",
            )

    def cancel(self, owner: str, body: Any) -> Dict[str, Any]:
        request_id = body.get("request_id") if isinstance(body, Mapping) else None
        if not isinstance(request_id, str):
            raise bad_request("cancel_future: missing required field 'request_id' (a string)")
        record = self.store.record(owner, request_id)
        self.stats.count("cancel_requests")
        if self.scheduler.cancel(record):
            self.stats.count("cancels")
        return {}

    # housekeeping -------------------------------------------------------------------------

    def sweep(self) -> None:
        """Expire idle sessions (cancelling their work) and forget stale results."""
        expired, forgotten = self.store.sweep()
        for session in expired:
            logger.info(
                "session %s expired (no heartbeat for %.0f s)", session.session_id, self.settings.session_expiry_s
            )
        self.stats.count("sessions_expired", len(expired))
        self._end(forgotten, "its session expired" if expired else "it expired")

    def stop_generations(self) -> None:
        """Cancel every pending request, so that no worker thread outlives the server."""
        for record in list(self.store.records.values()):
            if record.is_pending:
                self.scheduler.cancel(record, "the server is shutting down", category="server")

    def pause_state(self) -> Optional[Tuple[str, str, float]]:
        """The injected pause window in force: ``(queue_state, reason, seconds left)`` or None."""
        pause = self.faults.pause()
        if pause is None:
            return None
        window, left = pause
        return window.state, window.reason_text, left

    def records(self) -> List[Dict[str, Any]]:
        return [record.summary() for record in self.store.records.values()]

    def snapshot_for(self, owner: str) -> Dict[str, Any]:
        """What ``/admin/stats`` shows one key: its own sessions and requests, no server-wide counters."""
        sessions = [s for s in self.store.sessions.values() if s.owner == owner]
        records = [r for r in self.store.records.values() if r.owner == owner]
        return {
            "scope": "key",
            "sessions_active": sum(1 for s in sessions if s.is_active),
            "sessions_known": len(sessions),
            "sessions_ended": {state: sum(1 for s in sessions if s.state == state) for state in (FINISHED, EXPIRED)},
            "records": len(records),
            "running": sum(1 for r in records if r.state == RUNNING),
            "queued": sum(1 for r in records if r.state == QUEUED),
            "pending_tokens": self.store.pending_work[owner],
            "generations": [_generation_row(r.summary()) for r in records],
        }

    def snapshot(self) -> Dict[str, Any]:
        """Everything ``/admin/stats`` reports to the admin key (and ``LocalServer.stats()``)."""
        out = self.stats.snapshot()
        store = self.store
        out.update(
            scope="server",
            sessions_active=sum(1 for s in store.sessions.values() if s.is_active),
            sessions_known=len(store.sessions),
            sessions_ended={
                state: sum(1 for s in store.sessions.values() if s.state == state) for state in (FINISHED, EXPIRED)
            },
            records=len(store.records),
            running=self.scheduler.running,
            queued=self.scheduler.queued,
            generations=[_generation_row(r) for r in self.records()],
            faults_profile=self.faults.profile.to_spec(),
        )
        return out


def _generation_row(summary: Dict[str, Any]) -> Dict[str, Any]:
    return {k: summary[k] for k in ("sampling_session_id", "seq_id", "request_id", "generations")}
