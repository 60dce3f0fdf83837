"""The names of the server's routes, as used in fault specs and in ``/admin/stats`` counters."""

from __future__ import annotations

__all__ = ["ROUTE_PATHS", "ROUTE_NAMES"]

# name -> (method, path under /api/v1/)
ROUTE_PATHS = {
    "client_config": ("POST", "client/config"),
    "dynamic_config": ("POST", "client/dynamic_config"),
    "auth_token": ("POST", "auth/token"),
    "create_session": ("POST", "create_session"),
    "session_heartbeat": ("POST", "session_heartbeat"),
    "create_sampling_session": ("POST", "create_sampling_session"),
    "get_sampler": ("GET", "samplers/{sampler_id}"),
    "asample": ("POST", "asample"),
    "retrieve_future": ("POST", "retrieve_future"),
    "retrieve_futures": ("POST", "retrieve_futures"),
    "join_sampling_session": ("POST", "join_sampling_session"),
    "cancel_future": ("POST", "cancel_future"),
    "telemetry": ("POST", "telemetry"),
    "finish_session": ("POST", "sessions/{session_id}/finish"),
    "healthz": ("GET", "healthz"),
    "get_server_capabilities": ("GET", "get_server_capabilities"),
    "stream_sample": ("POST", "stream_sample"),
}

ROUTE_NAMES = tuple(ROUTE_PATHS)
