"""Session, sampling-session and service-configuration values."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import attrs

from ._wire import decode_list, decode_object, fields_to_json, get_field, require_mapping

__all__ = [
    "CreateSessionRequest",
    "CreateSessionResponse",
    "SessionHeartbeatRequest",
    "CreateSamplingSessionRequest",
    "CreateSamplingSessionResponse",
    "GetSamplerResponse",
    "FutureRetrieveRequest",
    "JoinSamplingSessionRequest",
    "JoinSamplingSessionResponse",
    "CancelFutureRequest",
    "FinishSessionRequest",
    "ClientConfig",
    "DynamicConfig",
    "SupportedModel",
    "ServerCapabilities",
]


def _kind(kind: Any) -> Dict[str, Any]:
    return {"kind": kind}


class _Wire:
    """Encode with omitted Nones; decode strictly (``kind`` metadata) ignoring unknown keys."""

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> Any:
        return decode_object(cls, data)


@attrs.frozen
class CreateSessionRequest(_Wire):
    """Body of ``create_session``."""

    tags: List[str] = attrs.field(factory=list, metadata=_kind(list))
    user_metadata: Dict[str, Any] = attrs.field(factory=dict, metadata=_kind(dict))
    sdk_version: str = attrs.field(default="", metadata=_kind(str))
    project_id: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    display_name: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    type: str = attrs.field(default="create_session", metadata=_kind(str))


@attrs.frozen
class CreateSessionResponse(_Wire):
    """Answer of ``create_session``; messages are logged at their level."""

    session_id: str = attrs.field(metadata=_kind(str))
    info_message: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    warning_message: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    error_message: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    type: Optional[str] = attrs.field(default=None, metadata=_kind(str))  # "create_session" when a server sends it


@attrs.frozen
class SessionHeartbeatRequest(_Wire):
    """Body of ``session_heartbeat``."""

    session_id: str = attrs.field(metadata=_kind(str))
    type: str = attrs.field(default="session_heartbeat", metadata=_kind(str))


@attrs.frozen
class CreateSamplingSessionRequest(_Wire):
    """Body of ``create_sampling_session``."""

    session_id: str = attrs.field(metadata=_kind(str))
    sampling_session_seq_id: int = attrs.field(metadata=_kind(int))
    base_model: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    model_path: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    type: str = attrs.field(default="create_sampling_session", metadata=_kind(str))


@attrs.frozen
class CreateSamplingSessionResponse(_Wire):
    """Answer of ``create_sampling_session``."""

    sampling_session_id: str = attrs.field(metadata=_kind(str))
    type: Optional[str] = attrs.field(default=None, metadata=_kind(str))


@attrs.frozen
class GetSamplerResponse(_Wire):
    """Answer of ``GET samplers/{id}``."""

    sampler_id: str = attrs.field(metadata=_kind(str))
    base_model: str = attrs.field(metadata=_kind(str))
    model_path: Optional[str] = attrs.field(default=None, metadata=_kind(str))
    tokenizer_id: Optional[str] = attrs.field(default=None, metadata=_kind(str))


@attrs.frozen
class FutureRetrieveRequest(_Wire):
    """Body of ``retrieve_future``."""

    request_id: str = attrs.field(metadata=_kind(str))
    allow_metadata_only: bool = attrs.field(default=True, metadata=_kind(bool))


@attrs.frozen
class JoinSamplingSessionRequest(_Wire):
    """Body of ``join_sampling_session``."""

    sampling_session_id: str = attrs.field(metadata=_kind(str))
    type: str = attrs.field(default="join_sampling_session", metadata=_kind(str))


@attrs.frozen
class JoinSamplingSessionResponse(_Wire):
    """Answer of ``join_sampling_session``: this clone's counter (>= 1)."""

    client_counter: int = attrs.field(metadata=_kind(int))
    type: Optional[str] = attrs.field(default=None, metadata=_kind(str))


@attrs.frozen
class CancelFutureRequest(_Wire):
    """Body of ``cancel_future``."""

    request_id: str = attrs.field(metadata=_kind(str))


@attrs.frozen
class FinishSessionRequest:
    """Body of ``sessions/{id}/finish``; ``detail`` is sent even when None."""

    reason: str = "success"
    detail: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        return {"reason": {"type": self.reason}, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Any) -> FinishSessionRequest:
        mapping = require_mapping(data, "FinishSessionRequest")
        reason = require_mapping(get_field(mapping, "reason", "FinishSessionRequest"), "reason")
        return cls(
            reason=get_field(reason, "type", "FinishSessionRequest.reason", str),
            detail=get_field(mapping, "detail", "FinishSessionRequest", str, None),
        )


@attrs.frozen
class ClientConfig(_Wire):
    """Flags from ``client/config``; every one optional with the official SDK's default."""

    pjwt_auth_enabled: bool = attrs.field(default=False, metadata=_kind(bool))
    credential_default_source: str = attrs.field(default="api_key", metadata=_kind(str))
    sample_dispatch_bytes_semaphore_size: int = attrs.field(default=10 * 1024 * 1024, metadata=_kind(int))
    inflight_response_bytes_semaphore_size: int = attrs.field(default=50 * 1024 * 1024, metadata=_kind(int))
    sample_max_concurrent_requests: int = attrs.field(default=2000, metadata=_kind(int))
    sample_no_retries: bool = attrs.field(default=False, metadata=_kind(bool))
    sample_enable_stuck_detection: bool = attrs.field(default=True, metadata=_kind(bool))
    billing_exception_max_pause_duration_sec: float = attrs.field(default=3600.0, metadata=_kind(float))
    sample_use_retrieve_futures: bool = attrs.field(default=False, metadata=_kind(bool))
    sample_join_sampling_session: bool = attrs.field(default=False, metadata=_kind(bool))


@attrs.frozen
class DynamicConfig(_Wire):
    """Flags from ``client/dynamic_config`` (a 404 means these defaults)."""

    refresh_interval_sec: float = attrs.field(default=300.0, metadata=_kind(float))
    sample_cancel_enabled: bool = attrs.field(default=False, metadata=_kind(bool))
    sample_cancel_max_batch_size: int = attrs.field(default=64, metadata=_kind(int))


@attrs.frozen
class SupportedModel(_Wire):
    """One model a server offers."""

    model_name: str = attrs.field(metadata=_kind(str))
    max_context_length: Optional[int] = attrs.field(default=None, metadata=_kind(int))
    trainable: Optional[bool] = attrs.field(default=None, metadata=_kind(bool))
    sampleable: Optional[bool] = attrs.field(default=None, metadata=_kind(bool))
    tokenizer_id: Optional[str] = attrs.field(default=None, metadata=_kind(str))


@attrs.frozen
class ServerCapabilities:
    """Answer of ``get_server_capabilities``."""

    supported_models: List[SupportedModel] = attrs.field(factory=list)

    def to_json(self) -> Dict[str, Any]:
        return {"supported_models": [model.to_json() for model in self.supported_models]}

    @classmethod
    def from_json(cls, data: Any) -> ServerCapabilities:
        mapping = require_mapping(data, "ServerCapabilities")
        models = get_field(mapping, "supported_models", "ServerCapabilities", list, [])
        return cls(supported_models=decode_list(models, "ServerCapabilities", SupportedModel.from_json))
