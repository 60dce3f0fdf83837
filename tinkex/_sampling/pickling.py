"""Pickling a SamplingClient into another process (protocol.md 7.11).

The pickle holds the session and sampling-session ids, the handshake's configuration and
the client's policies. The API key travels only when the ServiceClient was created with
``pickle_api_key=True``; otherwise the unpickling process takes it from ``TINKER_API_KEY``.
Unpickling builds (or, within one process, reuses) a client that joins the same sampling
session with seq_ids starting at ``clone_id × 10^9``; it runs its own heartbeat and never
finishes the session, which belongs to the original.

The client class travels in the pickle as a reference (``cls``), so this module never imports
the client: the client depends on it, not the other way round.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import attrs

from .._config import Config
from .._policy import PollPolicy, RetryConfig
from .._session import Holder, SessionInfo
from ..errors import ValidationError
from ..types import ClientConfig, DynamicConfig
from .snapshot import Snapshot

__all__ = ["reduce_payload", "restore_sampling_client", "encode_handle", "decode_handle", "UnrestoredClient"]

_CONFIG_FIELDS = ("timeout", "connect_timeout", "max_retries", "tags", "project_id", "telemetry", "verify",
                  "default_headers", "max_response_bytes")
_restored: Dict[Tuple[str, str], Any] = {}
_restored_lock = threading.Lock()  # guards _restored: one clone per sampling session per process


def reduce_payload(holder: Holder, state: Snapshot, *, max_workers: Optional[int], pickle_api_key: bool
                   ) -> Dict[str, Any]:
    """What a pickled client carries: plain data only (the key only when ``pickle_api_key``)."""
    config = holder.config
    info = holder.info
    return {
        "base_url": config.base_url,
        "api_key": config.api_key if pickle_api_key else None,
        "config": {name: getattr(config, name) for name in _CONFIG_FIELDS},
        "session": {"session_id": info.session_id, "client_config": info.client_config.to_json(),
                    "dynamic_config": info.dynamic_config.to_json()},
        "sampling_session_id": state.sampling_session_id,
        "base_model": state.base_model,
        "model_path": state.model_path,
        "retry_config": attrs.asdict(state.retry_config),
        "poll_policy": attrs.asdict(state.poll_policy),
        "max_workers": max_workers,
        "pickle_api_key": pickle_api_key,
    }


def encode_handle(payload: Dict[str, Any]) -> str:
    """A sampler handle: the payload without the key, as URL-safe base64 of compact JSON."""
    text = json.dumps({**payload, "api_key": None}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode("ascii")


def decode_handle(handle: Any) -> Dict[str, Any]:
    """The payload of a handle from :func:`encode_handle`; ``ValidationError`` when it is not one."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(handle))
        if not isinstance(payload, dict) or not isinstance(payload.get("sampling_session_id"), str):
            raise ValueError("no sampling_session_id")
    except (TypeError, ValueError, binascii.Error):
        raise ValidationError("handle is not a sampler handle from get_sampler_handle()", field="handle",
                              value=str(handle)[:40]) from None
    payload["config"]["tags"] = tuple(payload["config"].get("tags") or ())
    return payload


def restore_sampling_client(cls: Callable[..., Any], payload: Dict[str, Any]) -> Any:
    """Unpickle: the process's clone of this sampling session, built on first use and then reused.

    When the clone cannot be built here (no API key in this process), an :class:`UnrestoredClient`
    stands in for it: raising from unpickling would kill a process-pool worker before it runs
    the task, and the caller would see only ``BrokenProcessPool``; the stand-in raises the
    error from the task instead, so it reaches the caller through the task's future.
    """
    key = (payload["base_url"], payload["sampling_session_id"])
    with _restored_lock:
        existing = _restored.get(key)
        if existing is not None and not existing.closed:
            return existing
        try:
            client = _build(cls, payload)
        except ValidationError as exc:
            return UnrestoredClient(exc)
        _restored[key] = client
    return client.wait_ready()


class UnrestoredClient:
    """Stands in for a SamplingClient that could not be unpickled in this process.

    Every attribute (``sample``, ``wait_ready`` ...) raises the :class:`ValidationError` that
    prevented it, with how to fix it; ``close()`` does nothing.

    Thread-safety: immutable after construction.

    Example:
        >>> client = UnrestoredClient(ValidationError("no key", field="api_key"))
        >>> client.sample  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        tinkex.errors.ValidationError: A pickled SamplingClient could not be restored in this process: no key. ...
    """

    closed = True

    def __init__(self, error: ValidationError) -> None:
        self._message = (f"A pickled SamplingClient could not be restored in this process: {error.message.rstrip('.')}"
                         ". Set TINKER_API_KEY in this process's environment, or create the ServiceClient with "
                         "pickle_api_key=True (a sampler handle: pass api_key= to from_sampler_handle).")
        self._field = error.field

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ValidationError(self._message, field=self._field, value=None)

    def close(self) -> None:
        """Nothing to close."""

    def __repr__(self) -> str:
        return f"<SamplingClient could not be restored: {self._message}>"


def _build(cls: Callable[..., Any], payload: Dict[str, Any]) -> Any:
    config = Config.from_env(api_key=payload["api_key"], base_url=payload["base_url"], **payload["config"])
    holder = Holder(config)
    session = payload["session"]
    holder.adopt(SessionInfo(
        session_id=session["session_id"],
        client_config=ClientConfig.from_json(session["client_config"]),
        dynamic_config=DynamicConfig.from_json(session["dynamic_config"]),
    ))
    return cls(
        holder, sampling_session_id=payload["sampling_session_id"], base_model=payload["base_model"],
        model_path=payload["model_path"], retry_config=RetryConfig(**payload["retry_config"]),
        poll_policy=PollPolicy(**payload["poll_policy"]), max_workers=payload["max_workers"],
        _ownership=Ownership(owns_holder=True, clone=True, pickle_api_key=payload["pickle_api_key"]),
    )


@attrs.frozen
class Ownership:
    """How a client relates to its session: whether it closes it, whether it is a clone."""

    owns_holder: bool = False
    clone: bool = False
    pickle_api_key: bool = False
