"""Which sampling session a client samples from, and the snapshot it publishes.

:class:`SamplingTarget` creates (or joins) the sampling session at start-up, publishes the
client's :class:`Snapshot` by one reference assignment, folds dynamic-config updates into it,
and re-creates the session when a restarted server no longer knows it. The client and its
sampler both hold the target, so neither calls back into the other.
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Optional, Tuple

import attrs

from .._policy import PollPolicy, RetryConfig
from .._session import Holder
from ..errors import NotFoundError, TinkexError, ValidationError
from ..types import (
    CreateSamplingSessionRequest,
    CreateSamplingSessionResponse,
    DynamicConfig,
    GetSamplerResponse,
    JoinSamplingSessionRequest,
    JoinSamplingSessionResponse,
)
from .snapshot import Snapshot

__all__ = ["SamplingTarget", "TargetSpec", "CLONE_SEQ_STRIDE"]

logger = logging.getLogger(__name__)

CLONE_SEQ_STRIDE = 10**9


@attrs.frozen
class TargetSpec:
    """What the caller asked to sample from: a base model, a checkpoint, or an existing sampling session."""

    base_model: Optional[str] = None
    model_path: Optional[str] = None
    sampling_session_id: Optional[str] = None

    def __attrs_post_init__(self) -> None:
        path = self.model_path
        if path is not None and not (isinstance(path, str) and path.startswith("tinker://")):
            raise ValidationError(f"model_path must start with 'tinker://', got {path!r}", field="model_path",
                                  value=path)
        if self.base_model is None and path is None and self.sampling_session_id is None:
            raise ValidationError("Either model_path or base_model must be provided", field="base_model", value=None)


class SamplingTarget:
    """The sampling session behind one client and its published snapshot.

    Thread-safety: :attr:`current` is read without a lock (the snapshot is replaced whole by
    one reference assignment); :meth:`recover` runs one re-creation at a time under its lock.
    """

    def __init__(self, holder: Holder, spec: TargetSpec, retry_config: RetryConfig, poll_policy: PollPolicy) -> None:
        self._holder = holder
        self.spec = spec
        self._retry_config = retry_config
        self._poll_policy = poll_policy
        self._snapshot: Optional[Snapshot] = None
        self._recover_lock = threading.Lock()  # one re-creation of a forgotten sampling session at a time

    @property
    def current(self) -> Optional[Snapshot]:
        return self._snapshot

    def publish(self, snapshot: Snapshot) -> Snapshot:
        self._snapshot = snapshot  # one reference assignment: readers never lock
        return snapshot

    def resolve(self, *, clone: bool) -> Tuple[Snapshot, int]:
        """Create or join the sampling session and publish the first snapshot; returns it and the first seq_id."""
        info = self._holder.info
        spec = self.spec
        sampling_session_id = spec.sampling_session_id or self._create_sampling_session(info.session_id)
        first_seq = self._clone_id(sampling_session_id) * CLONE_SEQ_STRIDE if clone else 0
        base_model, tokenizer_id = spec.base_model, None
        if base_model is None or spec.sampling_session_id is not None:
            base_model, tokenizer_id = self._describe_sampler(sampling_session_id, base_model)
        self._holder.add_dynamic_config_listener(self.on_dynamic_config)
        return self.publish(Snapshot(
            session_id=info.session_id, sampling_session_id=sampling_session_id, base_model=base_model,
            model_path=spec.model_path, client_config=info.client_config, dynamic_config=info.dynamic_config,
            retry_config=self._retry_config, poll_policy=self._poll_policy, tokenizer_id=tokenizer_id,
        )), first_seq

    def on_dynamic_config(self, dynamic: DynamicConfig) -> None:
        state = self._snapshot
        if state is not None:
            self.publish(attrs.evolve(state, dynamic_config=dynamic))

    def mark_stream_unsupported(self) -> None:
        state = self._snapshot
        if state is not None:
            self.publish(attrs.evolve(state, stream_supported=False))

    def _create_sampling_session(self, session_id: str) -> str:
        request = CreateSamplingSessionRequest(
            session_id=session_id, sampling_session_seq_id=self._holder.next_sampling_session_seq_id(),
            base_model=self.spec.base_model, model_path=self.spec.model_path,
        )
        answer = self._holder.transport.request("POST", "create_sampling_session", body=request)
        created: CreateSamplingSessionResponse = CreateSamplingSessionResponse.from_json(
            answer.json("create_sampling_session")
        )
        return created.sampling_session_id

    def _describe_sampler(self, sampling_session_id: str, base_model: Optional[str]) -> Tuple[Optional[str],
                                                                                              Optional[str]]:
        try:
            answer = self._holder.transport.request("GET", f"samplers/{sampling_session_id}")
            sampler = GetSamplerResponse.from_json(answer.json("samplers"))
        except TinkexError:
            if base_model is None:
                raise
            return base_model, None
        return sampler.base_model, sampler.tokenizer_id

    def _clone_id(self, sampling_session_id: str) -> int:
        """This copy's clone id (protocol.md 7.3, 4.11): from join_sampling_session, else random."""
        if not self._holder.info.client_config.sample_join_sampling_session:
            return 1 + secrets.randbelow(CLONE_SEQ_STRIDE - 1)
        request = JoinSamplingSessionRequest(sampling_session_id=sampling_session_id)
        answer = self._holder.transport.request("POST", "join_sampling_session", body=request)
        joined: JoinSamplingSessionResponse = JoinSamplingSessionResponse.from_json(
            answer.json("join_sampling_session")
        )
        counter = joined.client_counter
        if counter < 1:
            raise TinkexError(f"join_sampling_session answered client_counter={counter}, not >= 1")
        return counter

    def recover(self, stale: Snapshot, closed: bool) -> Optional[Snapshot]:
        """Re-create the session and sampling session when the server no longer knows either (it
        restarted); returns the newer snapshot (published by this call or a concurrent one), else None."""
        with self._recover_lock:
            current = self._snapshot
            if current is None or current.sampling_session_id != stale.sampling_session_id:
                return current
            if self.spec.sampling_session_id is not None or closed or not self._forgotten(stale):
                return None
            session_id = self._holder.renew_session(stale.session_id)
            if session_id == stale.session_id:
                return None  # the session lives on: the error was about this request, not a restart
            sampling_session_id = self._create_sampling_session(session_id)
            logger.warning("The server no longer knows sampling session %s (did it restart?); continuing on new "
                           "sampling session %s", stale.sampling_session_id, sampling_session_id)
            return self.publish(attrs.evolve(current, session_id=session_id, sampling_session_id=sampling_session_id))

    def _forgotten(self, state: Snapshot) -> bool:
        try:
            self._holder.transport.request("GET", f"samplers/{state.sampling_session_id}", max_retries=2)
        except NotFoundError:
            return True
        except TinkexError:
            return False
        return False
