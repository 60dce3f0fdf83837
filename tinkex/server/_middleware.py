"""The middleware chain: errors as JSON (outermost), then the API key, then injected faults.

Nothing escapes as a traceback: ``Problem`` and aiohttp's HTTP exceptions become JSON bodies,
``DecodeError`` / ``ValidationError`` become 400s naming the problem, and anything else is
logged with its traceback and answered ``500 {"detail": "internal server error"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional

from aiohttp import web

from .._wire.codec import dumps
from ..errors import DecodeError, ValidationError
from ..types import QueueState, TryAgainResponse
from ._connections import ConnectionGuard
from ._engine import Engine
from ._problems import Problem

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

__all__ = [
    "json_response", "build_middlewares", "route_name", "ENGINE_KEY", "PRINCIPAL", "DROP_AFTER", "ADMIN_PRINCIPAL",
]  # fmt: skip

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENGINE_KEY: web.AppKey[Engine] = web.AppKey("tinkex_engine", Engine)


def _request_key(name: str, kind: type) -> Any:
    """A typed request-storage key where aiohttp has them (3.12+), else the plain name."""
    factory = getattr(web, "RequestKey", None)
    return factory(name, kind) if factory is not None else name


PRINCIPAL: Any = _request_key("tinkex_principal", str)
DROP_AFTER: Any = _request_key("tinkex_drop_after", bool)
ADMIN_ROUTES = ("admin_stats", "admin_stats_short")  # /api/v1/admin/stats and /admin/stats
ADMIN_PRINCIPAL = "*admin*"  # never a key fingerprint ("key-...") nor a JWT subject
UNMATCHED = "unmatched"
CLIENT_CLOSED = 499  # nginx's "client closed request"


def json_response(value: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type="application/json", headers=headers)


def route_name(request: web.Request) -> str:
    name = request.match_info.route.name
    return name or UNMATCHED


def build_middlewares(engine: Engine, guard: Optional[ConnectionGuard] = None) -> List[Middleware]:
    """The middlewares of the app, outermost first."""

    @web.middleware
    async def connection_busy(request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = guard.connection(request.transport) if guard is not None else None
        if connection is None:
            return await handler(request)
        connection.request_started()
        try:
            return await handler(request)
        finally:
            connection.request_finished()

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_name(request)
        engine.stats.count_request(route)
        response = await _answer_errors(request, handler, engine.settings.max_body_bytes)
        engine.stats.count_status(route, response.status)
        return response

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        key = request.headers.get("X-API-Key")
        if route_name(request) in ADMIN_ROUTES and _is_admin_key(key, engine.settings.admin_key):
            request[PRINCIPAL] = ADMIN_PRINCIPAL
        else:
            request[PRINCIPAL] = engine.auth.principal(key)
        return await handler(request)

    @web.middleware
    async def faults(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_name(request)
        if route in ADMIN_ROUTES or route == UNMATCHED:
            return await handler(request)
        return await _inject(engine, route, request, handler)

    return [connection_busy, errors, authenticate, faults]


def _is_admin_key(key: Optional[str], admin_key: Optional[str]) -> bool:
    if not key or not admin_key:
        return False
    return hmac.compare_digest(key.encode("utf-8", "surrogatepass"), admin_key.encode("utf-8", "surrogatepass"))


async def _answer_errors(request: web.Request, handler: Handler, body_limit: int) -> web.StreamResponse:
    try:
        return await handler(request)
    except Problem as problem:
        return json_response(problem.body(), problem.status, problem.headers or None)
    except (DecodeError, ValidationError) as exc:
        return json_response({"detail": str(exc)}, 400)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"detail": _http_detail(request, exc, body_limit)}, exc.status)
    except ConnectionError:
        return web.Response(status=CLIENT_CLOSED)  # never reaches the client, but counts in the stats
    except Exception:
        logger.exception("unexpected error answering %s %s", request.method, request.path)
        return json_response({"detail": "internal server error"}, 500)


def _http_detail(request: web.Request, exc: web.HTTPException, body_limit: int) -> str:
    if exc.status == 404:
        return f"no route {request.method} {request.path}"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}"
    if exc.status == 413:
        return f"request body too large (limit {body_limit} bytes)"
    return exc.reason


async def _inject(engine: Engine, route: str, request: web.Request, handler: Handler) -> web.StreamResponse:
    injector = engine.faults
    latency = injector.latency_s(route)
    if latency:
        _counted(engine, route, "latency_ms")
        await asyncio.sleep(latency)
    kind = injector.draw(route)
    if kind is None:
        return await handler(request)
    _counted(engine, route, kind)
    if kind == "drop_before":
        _abort(request)
        return web.Response(status=CLIENT_CLOSED)
    if kind == "drop_after":
        if route == "stream_sample":
            request[DROP_AFTER] = True
            return await handler(request)
        response = await handler(request)
        _abort(request)
        return response
    return await _status_fault(engine, request, kind)


def _counted(engine: Engine, route: str, kind: str) -> None:
    engine.stats.count_fault(route, kind)
    logger.info("injected fault %s on %s", kind, route)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _status_fault(engine: Engine, request: web.Request, kind: str) -> web.Response:
    status = int(kind)
    if status == 400:
        return web.Response(status=400)
    detail = f"injected fault: HTTP {status}"
    if status not in (408, 429):
        return json_response({"detail": detail}, status)
    pause = engine.pause_state()
    state, reason = (pause[0], pause[1]) if pause else ("paused_rate_limit" if status == 429 else "active", None)
    if status == 408:  # shaped like a try_again answer (protocol 4.9), with the fault's detail
        try_again = TryAgainResponse(await _request_id(request), QueueState.parse(state), reason)
        return json_response({**try_again.to_json(), "detail": detail}, status)
    body: Dict[str, Any] = {"detail": detail, "queue_state": state}
    if reason:
        body["queue_state_reason"] = reason
    return json_response(body, status)


async def _request_id(request: web.Request) -> str:
    """The request_id a faulted poll named, for a try_again-shaped 408 body."""
    try:
        body = await request.json()
    except Exception:
        return ""
    value = body.get("request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""
