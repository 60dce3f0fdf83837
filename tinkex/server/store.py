"""What the server remembers: sessions, sampling sessions and request records, with expiry.

Everything is owned by a *principal* (a fingerprint of the API key that created it, never the
key itself); another principal gets the same 404 as for an id that never existed. Ended
sessions and forgotten requests leave tombstones for ``tombstone_s`` so that late callers get
410 ("gone") rather than 404. Expiry is O(1) amortised: deadlines of one kind are queued in the
order they were set, so the sweeper only looks at the front of each queue.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Counter, Deque, Dict, List, Optional, Set, Tuple

from ..types import SamplePromise, SampleResponse
from ._generate import Event
from ._problems import Problem, gone, not_found
from ._settings import ServerSettings

if TYPE_CHECKING:
    from ._plan import GenerationPlan
    from ._poller import PollerLog

__all__ = ["Session", "SamplingSession", "RequestRecord", "Store", "new_id"]

ACTIVE, FINISHED, EXPIRED = "active", "finished", "expired"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
PENDING_STATES = (QUEUED, RUNNING)

Pair = Tuple[str, int]


def new_id(prefix: str) -> str:
    """An unguessable id: ``prefix`` + 128 random bits, URL-safe."""
    return prefix + secrets.token_urlsafe(16)


class Session:
    """One client session (``create_session``). Mutable; touched only on the event loop."""

    __slots__ = (
        "session_id", "owner", "created_at", "last_seen", "state", "ended_at", "end_reason",
        "sampling_sessions", "pending", "record_ids", "info",
    )  # fmt: skip

    def __init__(self, session_id: str, owner: str, now: float, info: Dict[str, Any]) -> None:
        self.session_id = session_id
        self.owner = owner
        self.created_at = now
        self.last_seen = now
        self.state = ACTIVE
        self.ended_at: Optional[float] = None
        self.end_reason: Optional[str] = None
        self.sampling_sessions: Dict[int, SamplingSession] = {}
        self.pending = 0
        self.record_ids: Set[str] = set()
        self.info = info

    @property
    def is_active(self) -> bool:
        return self.state == ACTIVE


class SamplingSession:
    """A sampler bound to one model inside a session (``create_sampling_session``); event loop only."""

    __slots__ = ("sampling_session_id", "session", "base_model", "model_path", "clients", "poller_logs")

    def __init__(self, sampling_session_id: str, session: Session, base_model: str, model_path: Optional[str]) -> None:
        self.sampling_session_id = sampling_session_id
        self.session = session
        self.base_model = base_model
        self.model_path = model_path
        self.clients = 0
        self.poller_logs: Dict[int, PollerLog] = {}


class RequestRecord:
    """One sample request from promise to expiry; its payload lives here until forgotten. Event loop
    only: worker threads never touch it, their results come back through the scheduler."""

    __slots__ = (
        "request_id", "owner", "session", "sampling_session_id", "seq_id", "plan", "model_name",
        "sequence_ids", "state", "generations", "created_at", "completed_at", "delivered_at",
        "expires_at", "response", "encoded", "error", "category", "cancel_flag", "waiter",
        "streaming", "events", "listeners", "interest", "aborted_by_stream", "work",
    )  # fmt: skip

    def __init__(
        self,
        *,
        owner: str,
        session: Optional[Session],
        sampling_session_id: Optional[str],
        seq_id: Optional[int],
        plan: GenerationPlan,
        model_name: str,
        num_samples: int,
        now: float,
        streaming: bool = False,
        generations: int = 0,
        work: int = 0,
    ) -> None:
        self.request_id = new_id("req-")
        self.work = work
        self.owner = owner
        self.session = session
        self.sampling_session_id = sampling_session_id
        self.seq_id = seq_id
        self.plan: Optional[GenerationPlan] = plan  # dropped once done: the prompt is not needed
        self.model_name = model_name
        self.sequence_ids = [f"{self.request_id}:seq:{index}" for index in range(num_samples)]
        self.state = QUEUED
        self.generations = generations
        self.created_at = now
        self.completed_at: Optional[float] = None
        self.delivered_at: Optional[float] = None
        self.expires_at: Optional[float] = None
        self.response: Optional[SampleResponse] = None
        self.encoded: Dict[str, bytes] = {}
        self.error: Optional[str] = None
        self.category: Optional[str] = None
        self.cancel_flag: Optional[threading.Event] = None
        self.waiter: Optional[asyncio.Future[None]] = None
        self.streaming = streaming
        self.events: List[Event] = []
        self.listeners: Set[asyncio.Event] = set()
        self.interest = 0
        self.aborted_by_stream = False

    @property
    def pair(self) -> Optional[Pair]:
        if self.sampling_session_id is None or self.seq_id is None:
            return None
        return (self.sampling_session_id, self.seq_id)

    @property
    def is_pending(self) -> bool:
        return self.state in PENDING_STATES

    def promise(self) -> Dict[str, Any]:
        return SamplePromise(self.request_id, self.model_name, self.sequence_ids).to_json()

    def summary(self) -> Dict[str, Any]:
        """For tests and ``/admin/stats``: identity, state and how many times it was generated."""
        return {
            "request_id": self.request_id,
            "sampling_session_id": self.sampling_session_id,
            "seq_id": self.seq_id,
            "state": self.state,
            "generations": self.generations,
            "streaming": self.streaming,
            "delivered": self.delivered_at is not None,
        }


def _decrement(counter: Counter[str], key: str, amount: int = 1) -> None:
    """Subtract, dropping keys that reach zero so the counters do not grow with every key seen."""
    left = counter[key] - amount
    if left > 0:
        counter[key] = left
    else:
        counter.pop(key, None)


class _Deadlines:
    """Deadlines of one fixed duration, so appended in order: expiry looks only at the front."""

    def __init__(self) -> None:
        self._queue: Deque[Tuple[float, str]] = collections.deque()

    def add(self, deadline: float, key: str) -> None:
        self._queue.append((deadline, key))

    def due(self, now: float) -> List[str]:
        out = []
        queue = self._queue
        while queue and queue[0][0] <= now:
            out.append(queue.popleft()[1])
        return out


class Store:
    """Sessions, sampling sessions and request records. Not thread-safe: event loop only.

    Example:
        >>> store = Store(ServerSettings(), clock=lambda: 0.0)
        >>> session = store.new_session("owner", {})
        >>> store.live_session("owner", session.session_id) is session
        True
    """

    def __init__(self, settings: ServerSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.sessions: Dict[str, Session] = {}
        self.sampling_sessions: Dict[str, SamplingSession] = {}
        self.records: Dict[str, RequestRecord] = {}
        self.pairs: Dict[Pair, str] = {}
        self._tombstones: Dict[str, Tuple[str, Optional[Pair]]] = {}
        self._unclaimed = _Deadlines()
        self._delivered = _Deadlines()
        self._buried = _Deadlines()
        self.active_sessions: Counter[str] = collections.Counter()  # per owner
        self.pending_work: Counter[str] = collections.Counter()  # tokens of unfinished requests per owner

    # sessions ---------------------------------------------------------------------------

    def new_session(self, owner: str, info: Dict[str, Any]) -> Session:
        session = Session(new_id("sess-"), owner, self.clock(), info)
        self.sessions[session.session_id] = session
        self.active_sessions[owner] += 1
        return session

    def session(self, owner: str, session_id: str) -> Session:
        """The caller's session, ended or not; 404 when unknown or someone else's."""
        session = self.sessions.get(session_id)
        if session is None or session.owner != owner:
            raise not_found(f"unknown session_id {session_id!r}")
        return session

    def live_session(self, owner: str, session_id: str) -> Session:
        """The caller's active session, touched; 410 once finished or expired."""
        session = self.session(owner, session_id)
        self._check_live(session)
        session.last_seen = self.clock()
        return session

    def _check_live(self, session: Session, status: int = 410) -> None:
        if session.is_active:
            return
        if session.state == EXPIRED:
            why = (
                f"session {session.session_id!r} expired after {self.settings.session_expiry_s:g} s without a heartbeat"
            )
        else:
            why = f"session {session.session_id!r} was finished ({session.end_reason})"
        raise Problem(status, why)

    def end_session(self, session: Session, state: str, reason: str) -> List[RequestRecord]:
        """Finish or expire ``session``; returns its records, which are forgotten (410)."""
        if not session.is_active:
            return []
        session.state = state
        _decrement(self.active_sessions, session.owner)
        session.end_reason = reason
        session.ended_at = self.clock()
        self._buried.add(session.ended_at + self.settings.tombstone_s, session.session_id)
        records = [self.records[rid] for rid in list(session.record_ids) if rid in self.records]
        for record in records:
            self.forget(record)
        return records

    # sampling sessions ------------------------------------------------------------------

    def new_sampling_session(
        self, owner: str, session_id: str, seq: int, base_model: str, model_path: Optional[str]
    ) -> SamplingSession:
        """Create (or, for a repeated ``seq``, return) the sampling session ``<sid>:sample:<seq>``."""
        session = self.live_session(owner, session_id)
        existing = session.sampling_sessions.get(seq)
        if existing is not None:
            return existing
        sampler = SamplingSession(f"{session_id}:sample:{seq}", session, base_model, model_path)
        session.sampling_sessions[seq] = sampler
        self.sampling_sessions[sampler.sampling_session_id] = sampler
        return sampler

    def sampling_session(self, owner: str, sampling_session_id: str, missing: int = 404) -> SamplingSession:
        sampler = self.sampling_sessions.get(sampling_session_id)
        if sampler is None or sampler.session.owner != owner:
            raise Problem(missing, f"unknown sampling_session_id {sampling_session_id!r}")
        return sampler

    def sampler_for_request(self, owner: str, sampling_session_id: str) -> SamplingSession:
        """The sampling session a sample request names: 400 when unknown or its session ended."""
        sampler = self.sampling_session(owner, sampling_session_id, missing=400)
        self._check_live(sampler.session, status=400)
        sampler.session.last_seen = self.clock()
        return sampler

    # request records --------------------------------------------------------------------

    def find_pair(self, pair: Pair) -> Optional[str]:
        return self.pairs.get(pair)

    def add_record(self, record: RequestRecord) -> None:
        self.records[record.request_id] = record
        if record.pair is not None:
            self.pairs[record.pair] = record.request_id
        if record.session is not None:
            record.session.record_ids.add(record.request_id)
            record.session.pending += 1
        self.pending_work[record.owner] += record.work

    def record(self, owner: str, request_id: str) -> RequestRecord:
        """The caller's record; 410 when forgotten, 404 when unknown or someone else's."""
        record = self.records.get(request_id)
        if record is not None and record.owner == owner:
            return record
        tomb = self._tombstones.get(request_id)
        if tomb is not None and tomb[0] == owner:
            raise gone(f"request {request_id!r} has expired; submit it again")
        raise not_found(f"unknown request_id {request_id!r}")

    def peek_record(self, request_id: str) -> Optional[RequestRecord]:
        return self.records.get(request_id)

    def completed(self, record: RequestRecord) -> None:
        """Start the clock on an unclaimed result, and release the session's pending slot."""
        now = self.clock()
        record.completed_at = now
        if record.session is not None:
            record.session.pending -= 1
        _decrement(self.pending_work, record.owner, record.work)
        if record.request_id in self.records:
            record.expires_at = now + self.settings.promise_expiry_s
            self._unclaimed.add(record.expires_at, record.request_id)

    def delivered(self, record: RequestRecord) -> None:
        """A result went out: keep it ``result_retention_s`` more for re-polls."""
        if record.delivered_at is not None:
            return
        record.delivered_at = self.clock()
        record.expires_at = record.delivered_at + self.settings.result_retention_s
        self._delivered.add(record.expires_at, record.request_id)

    def forget(self, record: RequestRecord) -> None:
        """Drop the payload; later polls get 410 until the tombstone goes."""
        if self.records.pop(record.request_id, None) is None:
            return
        if record.session is not None:
            record.session.record_ids.discard(record.request_id)
        self._tombstones[record.request_id] = (record.owner, record.pair)
        self._buried.add(self.clock() + self.settings.tombstone_s, record.request_id)

    def replace_pair(self, old: RequestRecord, new: RequestRecord) -> None:
        """A stream whose client vanished is generated again on resubmit: the pair moves on."""
        self.forget(old)
        self.add_record(new)

    # expiry -----------------------------------------------------------------------------

    def sweep(self) -> Tuple[List[Session], List[RequestRecord]]:
        """Expire idle sessions and stale results; returns (expired sessions, forgotten records)."""
        now = self.clock()
        forgotten: List[RequestRecord] = []
        for rid in self._unclaimed.due(now) + self._delivered.due(now):
            record = self.records.get(rid)
            if record is not None and record.expires_at is not None and record.expires_at <= now:
                self.forget(record)
                forgotten.append(record)
        expired = self._expire_sessions(now, forgotten)
        self._bury(now)
        return expired, forgotten

    def _expire_sessions(self, now: float, forgotten: List[RequestRecord]) -> List[Session]:
        limit = now - self.settings.session_expiry_s
        expired = [s for s in self.sessions.values() if s.is_active and s.last_seen <= limit]
        for session in expired:
            forgotten.extend(self.end_session(session, EXPIRED, "no heartbeat"))
        return expired

    def _bury(self, now: float) -> None:
        for key in self._buried.due(now):
            tomb = self._tombstones.pop(key, None)
            if tomb is not None:
                if tomb[1] is not None and self.pairs.get(tomb[1]) == key:
                    del self.pairs[tomb[1]]
                continue
            session = self.sessions.get(key)
            if session is not None and not session.is_active:
                del self.sessions[key]
                for sampler in session.sampling_sessions.values():
                    self.sampling_sessions.pop(sampler.sampling_session_id, None)
