"""The aiohttp application: every sampling-path route of protocol sections 4 and 9 under ``/api/v1/``.

Handlers are thin: read the JSON body, call the :class:`~tinkex.server._engine.Engine`, send
the answer. Authentication, fault injection and error bodies live in the middleware chain.
``X-API-Key`` is required on every route, ``healthz`` and ``admin/stats`` included;
``admin/stats`` also answers only loopback clients, and shows the server-wide view only to
the server's admin key (any other key sees its own sessions and requests).

Example:
    >>> from tinkex.server.app import API_PREFIX
    >>> API_PREFIX
    '/api/v1/'
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any, Callable, Optional

from aiohttp import web

from .._wire.codec import loads
from ._connections import ConnectionGuard
from ._engine import Engine
from ._middleware import ADMIN_PRINCIPAL, ENGINE_KEY, PRINCIPAL, build_middlewares, json_response
from ._problems import Problem, bad_request
from ._retrieve import PROTOBUF, retrieve_future, retrieve_futures
from ._routes import ROUTE_PATHS
from ._stream import stream_sample

__all__ = ["create_app", "API_PREFIX"]

API_PREFIX = "/api/v1/"
_TELEMETRY_ACCEPTED = {"status": "accepted"}


async def _body(request: web.Request, what: str, *, required: bool = True) -> Any:
    """The decoded JSON body; 400 when it is not JSON (or absent but required), 413 when too large."""
    settings = request.app[ENGINE_KEY].settings
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, f"request body of {request.content_length} bytes is larger than the limit of {limit}")
    try:
        data = await asyncio.wait_for(request.read(), settings.body_timeout_s)
    except asyncio.TimeoutError:
        detail = f"{what}: request body not received within {settings.body_timeout_s:g} s"
        raise Problem(408, detail, headers={"Connection": "close"}) from None
    if not data:
        if required:
            raise bad_request(f"{what}: empty body, expected a JSON object")
        return None
    return loads(data, what=f"{what} request body")


def _owner(request: web.Request) -> str:
    owner: str = request[PRINCIPAL]  # set by the auth middleware; aiohttp types request state as Any
    return owner


def _is_loopback(remote: Any) -> bool:
    try:
        return ipaddress.ip_address(str(remote)).is_loopback
    except ValueError:
        return False


class _Handlers:
    """One coroutine per route; each is named like its route in ``_routes.ROUTE_PATHS``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def client_config(self, request: web.Request) -> web.Response:
        await _body(request, "client/config", required=False)
        return json_response(self.engine.client_config())

    async def dynamic_config(self, request: web.Request) -> web.Response:
        await _body(request, "client/dynamic_config", required=False)
        return json_response(self.engine.dynamic_config())

    async def auth_token(self, request: web.Request) -> web.Response:
        await _body(request, "auth/token", required=False)
        return json_response({"jwt": self.engine.auth.issue_jwt(_owner(request))})

    async def create_session(self, request: web.Request) -> web.Response:
        body = await _body(request, "create_session")
        return json_response(self.engine.create_session(_owner(request), body))

    async def session_heartbeat(self, request: web.Request) -> web.Response:
        body = await _body(request, "session_heartbeat")
        return json_response(self.engine.heartbeat(_owner(request), body))

    async def create_sampling_session(self, request: web.Request) -> web.Response:
        body = await _body(request, "create_sampling_session")
        return json_response(self.engine.create_sampling_session(_owner(request), body))

    async def get_sampler(self, request: web.Request) -> web.Response:
        return json_response(self.engine.get_sampler(_owner(request), request.match_info["sampler_id"]))

    async def asample(self, request: web.Request) -> web.Response:
        body = await _body(request, "asample")
        record, _ = self.engine.submit(_owner(request), body)
        return json_response(record.promise())

    async def retrieve_future(self, request: web.Request) -> web.Response:
        body = await _body(request, "retrieve_future")
        protobuf = PROTOBUF in request.headers.get("Accept", "").lower()
        answer = await retrieve_future(self.engine, _owner(request), body, protobuf)
        return web.Response(body=answer.body, content_type=answer.content_type)

    async def retrieve_futures(self, request: web.Request) -> web.Response:
        body = await _body(request, "retrieve_futures")
        return json_response(await retrieve_futures(self.engine, _owner(request), body))

    async def join_sampling_session(self, request: web.Request) -> web.Response:
        body = await _body(request, "join_sampling_session")
        return json_response(self.engine.join(_owner(request), body))

    async def cancel_future(self, request: web.Request) -> web.Response:
        body = await _body(request, "cancel_future")
        return json_response(self.engine.cancel(_owner(request), body))

    async def telemetry(self, request: web.Request) -> web.Response:
        body = await _body(request, "telemetry", required=False)
        events = body.get("events") if isinstance(body, dict) else None
        self.engine.stats.count("telemetry_events", len(events) if isinstance(events, list) else 0)
        return json_response(_TELEMETRY_ACCEPTED)

    async def finish_session(self, request: web.Request) -> web.Response:
        body = await _body(request, "sessions/finish", required=False)
        return json_response(self.engine.finish_session(_owner(request), request.match_info["session_id"], body))

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def get_server_capabilities(self, request: web.Request) -> web.Response:
        return json_response(self.engine.capabilities())

    async def stream_sample(self, request: web.Request) -> web.StreamResponse:
        body = await _body(request, "stream_sample")
        return await stream_sample(self.engine, request, _owner(request), body)

    async def admin_stats(self, request: web.Request) -> web.Response:
        if not _is_loopback(request.remote):
            raise Problem(403, "admin/stats answers loopback clients only")
        if _owner(request) == ADMIN_PRINCIPAL:
            return json_response(self.engine.snapshot())
        return json_response(self.engine.snapshot_for(_owner(request)))


def create_app(engine: Engine, guard: Optional[ConnectionGuard] = None) -> web.Application:
    """The application serving ``engine``; run it with an ``AppRunner(handler_cancellation=True)``
    so that a client hanging up stops its long poll or stream. ``guard`` (the listening site's
    connection guard) learns when each connection is busy with a request."""
    middlewares = build_middlewares(engine, guard)
    app = web.Application(middlewares=middlewares, client_max_size=engine.settings.max_body_bytes)
    app[ENGINE_KEY] = engine
    handlers = _Handlers(engine)
    for name, (method, path) in ROUTE_PATHS.items():
        handler: Callable[..., Any] = getattr(handlers, name)
        app.router.add_route(method, API_PREFIX + path, handler, name=name)
    app.router.add_get(API_PREFIX + "admin/stats", handlers.admin_stats, name="admin_stats")
    app.router.add_get("/admin/stats", handlers.admin_stats, name="admin_stats_short")  # same checks, no faults
    return app
