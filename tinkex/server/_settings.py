"""The local server's settings: one frozen value built by ``LocalServer`` or the CLI."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Type, Union

import attrs

from ..errors import DecodeError, ValidationError
from ..types import ClientConfig, DynamicConfig

__all__ = ["ServerSettings", "is_loopback_host", "split_config_flags", "parse_config_flag", "DYNAMIC_FLAGS"]


def _positive(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_number(attribute, value, "a positive", lambda number: number > 0)


def _non_negative(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _check_number(attribute, value, "a non-negative", lambda number: number >= 0)


_WHOLE_TYPES = (int, "int", "Optional[int]")  # the annotation as attrs keeps it (a string, postponed)


def _check_number(attribute: attrs.Attribute[Any], value: Any, kind: str, allowed: Callable[[Any], bool]) -> None:
    whole = attribute.type in _WHOLE_TYPES  # counts and sizes must be whole: 1.5 workers is no setting
    accepted = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, accepted) or not allowed(value):
        noun = "whole number" if whole else "number"
        raise ValidationError(f"{attribute.name} must be {kind} {noun}, got {value!r}", field=attribute.name,
                              value=value)


def _keys(value: Any) -> Tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    keys = tuple(value)
    for key in keys:
        if not isinstance(key, str) or not key.strip():
            raise ValidationError("api_keys must be non-empty strings", field="api_keys")
    return keys


def _config_dict(value: Any) -> Dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"expected a dict of flags, got {type(value).__name__}", field="config", value=value)
    return dict(value)


_FlagsValidator = Callable[[Any, "attrs.Attribute[Dict[str, Any]]", Dict[str, Any]], None]


def _flags_of(kind: Type[Union[ClientConfig, DynamicConfig]]) -> _FlagsValidator:
    """A validator: every known flag of ``kind`` (ClientConfig / DynamicConfig) has its type."""

    def check(_instance: Any, attribute: attrs.Attribute[Dict[str, Any]], flags: Dict[str, Any]) -> None:
        for name, value in flags.items():
            try:
                kind.from_json({name: value})
            except DecodeError as exc:
                raise ValidationError(
                    f"{attribute.name}: flag {name!r} has the wrong type: {exc}", field=name, value=value
                ) from None

    return check


DYNAMIC_FLAGS = frozenset(attrs.fields_dict(DynamicConfig))


def split_config_flags(
    client_config: Optional[Mapping[str, Any]], dynamic_config: Optional[Mapping[str, Any]] = None
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(client/config flags, client/dynamic_config flags)``: a flag the protocol serves from
    ``dynamic_config`` (``sample_cancel_enabled``, ``sample_cancel_max_batch_size``,
    ``refresh_interval_sec``) moves there from ``client_config``; explicit ``dynamic_config`` wins.

    Example:
        >>> split_config_flags({"sample_use_retrieve_futures": True, "sample_cancel_enabled": True})
        ({'sample_use_retrieve_futures': True}, {'sample_cancel_enabled': True})
    """
    client = _config_dict(client_config)
    dynamic = {name: client.pop(name) for name in list(client) if name in DYNAMIC_FLAGS}
    dynamic.update(_config_dict(dynamic_config))
    return client, dynamic


def parse_config_flag(text: str) -> Tuple[str, Any]:
    """``KEY=VALUE`` from the command line: VALUE as JSON (``true``, ``8``, ``"x"``), else the
    plain string.

    Example:
        >>> parse_config_flag("sample_max_concurrent_requests=8"), parse_config_flag("credential_default_source=x")
        (('sample_max_concurrent_requests', 8), ('credential_default_source', 'x'))
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValidationError(f"expected KEY=VALUE, got {text!r}", field="client_config", value=text)
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


_DESCRIPTOR_RESERVE = 64  # kept free for the listening socket, the model cache, logs, pipes
_MAX_DEFAULT_CONNECTIONS = 4096


def _default_connection_cap() -> int:
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows)
        return 512
    if soft == resource.RLIM_INFINITY:
        return _MAX_DEFAULT_CONNECTIONS
    return max(16, min(_MAX_DEFAULT_CONNECTIONS, soft - _DESCRIPTOR_RESERVE))


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@attrs.frozen
class ServerSettings:
    """Every knob of the local server; times in seconds, sizes in bytes.

    Args:
        host: the address to bind; anything but loopback needs ``api_keys``.
        port: the port to bind, 0 for a free one.
        api_keys: the only keys accepted; empty means any ``tml-`` key (loopback only).
        admin_key: the key that sees every principal's sessions and requests in ``/admin/stats``
            (any other key sees only its own); None means no key does.
        poll_hold_s: how long ``retrieve_future`` / ``retrieve_futures`` hold a pending poll.
        max_concurrent_generations: generations running at once; more wait in a FIFO queue.
        session_pending_limit: unfinished requests per session before ``asample`` answers 429.
        session_expiry_s: a session with no heartbeat (or sampling) for this long expires.
        promise_expiry_s: a finished result nobody retrieved is forgotten (410) after this.
        result_retention_s: a delivered result stays retrievable this long.
        tombstone_s: how long a forgotten request still answers 410 rather than 404.
        metadata_threshold_bytes: results larger than this answer ``complete_metadata`` first.
        max_body_bytes: request bodies above this get 413.
        max_num_samples: the largest ``num_samples`` accepted.
        max_request_tokens: the most tokens one request may ask for (``num_samples`` times its
            ``max_tokens``, or the model's default length); more is a 400 naming both.
        max_pending_tokens_per_key: tokens of unfinished requests one API key may have queued
            or generating; a request beyond it gets 429 (``paused_rate_limit``) until some finish.
        max_sessions_per_key: active sessions one API key may hold; more get 429.
        inline_max_tokens: a cheap model's request this small runs on the event loop (cheaper
            than a thread hand-off); anything larger goes to the worker pool.
        max_topk: the largest ``topk_prompt_logprobs`` / ``topk_sample_logprobs`` accepted.
        token_delay_ms: simulated decoding time per generated token.
        sse_keepalive_s: idle time after which a stream gets a ``: keep-alive`` comment.
        jwt_enabled: advertise ``pjwt_auth_enabled`` so clients exchange keys for JWTs.
        jwt_ttl_s: lifetime of a JWT from ``auth/token``.
        client_config: ``client/config`` flags overriding the defaults (unknown flags pass through).
        dynamic_config: ``client/dynamic_config`` flags overriding the defaults.
        inline_cheap_models: run models that declare themselves cheap (echo) on the event loop.
        shutdown_timeout_s: how long ``stop`` lets in-flight requests finish.
        max_connections_per_peer: open connections per client address; more are answered 429
            and closed. None: the process's descriptor limit less a reserve, at most 4096.
        head_timeout_s: a connection that started a request head and did not finish it in
            this time is cut (half-sent headers cannot pin descriptors).
        idle_timeout_s: a keep-alive connection that sends nothing for this long is closed.
        body_timeout_s: reading a request body longer than this answers 408.

    Example:
        >>> ServerSettings(poll_hold_s=0.5).poll_hold_s
        0.5
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_keys: Tuple[str, ...] = attrs.field(default=(), converter=_keys, repr=False)
    admin_key: Optional[str] = attrs.field(default=None, repr=False)
    poll_hold_s: float = attrs.field(default=10.0, validator=_positive)
    max_concurrent_generations: int = attrs.field(default=4, validator=_positive)
    session_pending_limit: int = attrs.field(default=4096, validator=_positive)
    session_expiry_s: float = attrs.field(default=300.0, validator=_positive)
    promise_expiry_s: float = attrs.field(default=600.0, validator=_positive)
    result_retention_s: float = attrs.field(default=120.0, validator=_positive)
    tombstone_s: float = attrs.field(default=900.0, validator=_positive)
    metadata_threshold_bytes: int = attrs.field(default=65536, validator=_non_negative)
    max_body_bytes: int = attrs.field(default=10 * 1024 * 1024, validator=_positive)
    max_num_samples: int = attrs.field(default=128, validator=_positive)
    max_request_tokens: int = attrs.field(default=131072, validator=_positive)
    max_pending_tokens_per_key: int = attrs.field(default=1048576, validator=_positive)
    max_sessions_per_key: int = attrs.field(default=1000, validator=_positive)
    inline_max_tokens: int = attrs.field(default=4096, validator=_non_negative)
    max_topk: int = attrs.field(default=64, validator=_positive)
    token_delay_ms: float = attrs.field(default=0.0, validator=_non_negative)
    sse_keepalive_s: float = attrs.field(default=10.0, validator=_positive)
    jwt_enabled: bool = False
    jwt_ttl_s: float = attrs.field(default=3600.0, validator=_positive)
    client_config: Dict[str, Any] = attrs.field(factory=dict, converter=_config_dict, validator=_flags_of(ClientConfig))
    dynamic_config: Dict[str, Any] = attrs.field(
        factory=dict, converter=_config_dict, validator=_flags_of(DynamicConfig)
    )
    inline_cheap_models: bool = True
    shutdown_timeout_s: float = attrs.field(default=1.0, validator=_non_negative)
    max_connections_per_peer: Optional[int] = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    head_timeout_s: float = attrs.field(default=10.0, validator=_positive)
    idle_timeout_s: float = attrs.field(default=75.0, validator=_positive)
    body_timeout_s: float = attrs.field(default=30.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not is_loopback_host(self.host) and not self.api_keys:
            raise ValidationError(
                f"binding {self.host!r} (not loopback) requires explicit api_keys", field="host", value=self.host
            )
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValidationError(f"port must be in [0, 65535], got {self.port!r}", field="port", value=self.port)

    @property
    def token_delay_s(self) -> float:
        return self.token_delay_ms / 1000.0

    @property
    def connection_cap(self) -> int:
        """``max_connections_per_peer``, or the default derived from the descriptor limit."""
        if self.max_connections_per_peer is not None:
            return int(self.max_connections_per_peer)
        return _default_connection_cap()

    def describe_keys(self) -> Optional[str]:
        """How keys are checked, for start-up logs (never the keys themselves)."""
        if self.api_keys:
            return f"{len(self.api_keys)} configured API key(s)"
        return "any key starting with 'tml-'"
