"""HTTP transport: one ``requests.Session`` per client, headers, one call with its HTTP-layer retries.

Everything ``requests`` raises is turned into :mod:`tinkex.errors` (by :mod:`.errors`); nothing
above this package sees a ``requests`` exception. What to do with a status is asked of
:func:`tinkex._policy.classify`; this module only carries it out.
"""

from __future__ import annotations

import logging
import platform
import threading
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Protocol, Tuple, Union
from urllib.parse import urlsplit

import attrs
import requests
import urllib3
from requests.cookies import RequestsCookieJar, merge_cookies

from .._clock import SYSTEM_CLOCK, Clock
from .._config import Config, __version__
from .._logging import LazyRequestId
from .._policy import Action, HTTPRetryPolicy, Phase, classify
from .._policy import is_bare_400 as _bare_400
from .._wire import codec as _codec
from ..errors import APIConnectionError, APIStatusError, APITimeoutError, DecodeError
from .error_body import status_error
from .errors import LIBRARY_ERRORS, check_headers, library_error
from .idempotency import new_idempotency_key
from .pool import REDIRECTS, TrackingAdapter, UrlOnly
from .sse import EventStream
from .watchdog import Abort, DeadlineWatchdog, abortable

__all__ = ["Response", "Sender", "Transport", "USER_AGENT"]

logger = logging.getLogger(__name__)

USER_AGENT = f"tinkex/{__version__} python/{'.'.join(platform.python_version_tuple()[:2])}"
_CREDENTIAL_HEADERS = ("X-API-Key", "Authorization", "CF-Access-Client-Id", "CF-Access-Client-Secret")
_READ_CHUNK = 64 * 1024

RetryListener = Callable[[str], None]


@attrs.frozen
class Response:
    """A fully read HTTP answer."""

    status: int
    headers: Mapping[str, str]
    content: bytes
    url: str

    def json(self, what: str) -> Any:
        return _codec.loads(self.content, what=what)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def bare_400(self) -> bool:
        """A 400 with an empty body: a proxy rejection, treated as a connection error (7.2)."""
        return _bare_400(self.status, self.content)


class Sender(Protocol):
    """What the sampling layer needs of a transport (:class:`Transport`, or the in-memory fake)."""

    @property
    def stop_event(self) -> threading.Event: ...

    @property
    def max_response_bytes(self) -> int: ...

    def url(self, path: str) -> str: ...

    def request(
        self, method: str, path: str, *, body: Any = None, read_timeout: Optional[float] = None,
        max_retries: Optional[int] = None, headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[float] = None, check: bool = True, abort: Optional[Abort] = None,
    ) -> Response: ...

    def open_stream(
        self, path: str, payload: bytes, headers: Mapping[str, str], read_timeout: float, deadline: Optional[float],
    ) -> EventStream: ...

    def error_for(self, response: Union[Response, EventStream]) -> APIStatusError: ...


class _Session(requests.Session):
    """A Session that drops every credential header, and every header the user added
    (``default_headers``), when a redirect leaves the original host."""

    private_headers: Tuple[str, ...] = _CREDENTIAL_HEADERS

    def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
        super().rebuild_auth(prepared_request, response)  # type: ignore[no-untyped-call]  # untyped in types-requests
        if self.should_strip_auth(response.request.url, prepared_request.url):  # type: ignore[no-untyped-call]
            for name in self.private_headers:
                prepared_request.headers.pop(name, None)


class Transport:
    """Sends HTTP calls for one client and maps every failure to a tinkex error.

    Thread-safety: safe to share between threads; the session's connection pool is sized for
    the client's workers and the credential is swapped by one reference assignment.

    Example:
        >>> transport = Transport(Config.from_env(api_key="tml-x", base_url="http://127.0.0.1:1"))
        >>> transport.close()
    """

    def __init__(
        self,
        config: Config,
        *,
        pool_size: int = 64,
        clock: Clock = SYSTEM_CLOCK,
        stop_event: Optional[threading.Event] = None,
        on_retry: Optional[RetryListener] = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.retry_policy = HTTPRetryPolicy(max_retries=config.max_retries)
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._on_retry = on_retry
        self._credential = config.api_key
        self._base_headers = self._build_base_headers()
        self._session = self._build_session(pool_size)
        self._direct = not self._session.proxies
        self._pool: Any = None  # the direct path's urllib3 pool, found on first use
        self._path_prefix = urlsplit(self.url("")).path
        self._watchdog = DeadlineWatchdog(clock.monotonic)
        self._timeout_cache: Dict[float, urllib3.Timeout] = {}  # read timeout -> the shared Timeout without a deadline
        self._closed = False

    def _build_session(self, pool_size: int) -> requests.Session:
        session = _Session()
        session.private_headers = _CREDENTIAL_HEADERS + tuple(self.config.default_headers)
        self._adapter = TrackingAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", self._adapter)
        session.mount("https://", self._adapter)
        session.verify = self.config.verify
        session.headers.clear()
        # Resolve proxies once: per-call environment lookups cost more than the rest of a call.
        session.proxies.update(requests.utils.get_environ_proxies(self.config.base_url))
        session.trust_env = False
        return session

    def _build_base_headers(self) -> Dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip, deflate",
            "Connection": "keep-alive",
        }
        if self.config.cf_access_client_id:
            headers["CF-Access-Client-Id"] = self.config.cf_access_client_id
        if self.config.cf_access_client_secret:
            headers["CF-Access-Client-Secret"] = self.config.cf_access_client_secret
        headers.update(self.config.default_headers)
        return headers

    @property
    def stop_event(self) -> threading.Event:
        """Set by ``close()``; waits of calls on this transport watch it."""
        return self._stop

    def derive(self, *, pool_size: int) -> Transport:
        """A transport with its own pool and stop event, sharing this one's current credential."""
        other = Transport(self.config, pool_size=pool_size, clock=self.clock, on_retry=self._on_retry)
        other.set_credential(self._credential)
        return other

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def max_response_bytes(self) -> int:
        """The largest answer body this transport reads (``Config.max_response_bytes``)."""
        return self.config.max_response_bytes

    def set_credential(self, credential: str) -> None:
        """Use ``credential`` (for example an exchanged JWT) as ``X-API-Key`` from now on."""
        self._credential = credential

    def url(self, path: str) -> str:
        return f"{self.config.base_url}/api/v1/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        read_timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        headers: Optional[Mapping[str, str]] = None,
        deadline: Optional[float] = None,
        check: bool = True,
        abort: Optional[Abort] = None,
    ) -> Response:
        """Send one logical call, resending it on retryable failures (same idempotency key).

        Args:
            method: ``GET`` or ``POST``.
            path: the path under ``/api/v1/``.
            body: a JSON-encodable value, an attrs value with ``to_json``, or raw bytes.
            read_timeout: seconds for each socket read (default ``config.timeout``).
            max_retries: HTTP-layer retries (default ``config.max_retries``; 0 for none).
            headers: extra headers for this call.
            deadline: a ``clock.monotonic()`` instant after which the call fails with
                :class:`APITimeoutError`.
            check: raise the typed status error on a non-2xx answer (else return it).
            abort: lets another thread cut this call at once (:class:`~tinkex._http.watchdog.Abort`).

        Raises:
            APIStatusError: a non-2xx answer (when ``check``), subclass by status.
            APIConnectionError: no usable answer; :class:`APITimeoutError` for timeouts.
        """
        payload = _encode_body(body)
        call_headers = self._call_headers(method, payload, headers, read_timeout)
        retries = self.config.max_retries if max_retries is None else max_retries
        taken = 0
        while True:
            call_headers["x-stainless-retry-count"] = str(taken)
            started = self.clock.monotonic()
            try:
                if abort is not None and abort.aborted:
                    raise APIConnectionError(f"{method} {self.url(path)} was aborted", url=self.url(path))
                with abortable(abort):
                    response = self._send_once(method, path, payload, call_headers, read_timeout, deadline)
            except APIConnectionError as exc:
                if taken >= retries or isinstance(exc, _DeadlineExceeded):
                    raise
                delay, cause = self.retry_policy.delay(taken, {}, self.clock), "connection"
                _log_connection_retry(exc, taken, retries, delay)
            else:
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("%s %s: %d in %.1f ms (request id %s)", method, path, response.status, (
                        self.clock.monotonic() - started) * 1e3, LazyRequestId(payload, response.content,
                                                                             response.headers))
                action = classify(Phase.HTTP, response.status, response.content, response.headers)
                if action is not Action.RETRY or taken >= retries:
                    return self._finish(response, check)
                delay, cause = self.retry_policy.delay(taken, response.headers, self.clock), str(response.status)
            taken += 1
            self._before_retry(method, path, cause, delay, deadline)

    def _before_retry(self, method: str, path: str, cause: str, delay: float, deadline: Optional[float]) -> None:
        if deadline is not None and self.clock.monotonic() + delay >= deadline:
            raise _DeadlineExceeded(f"{method} {self.url(path)} ran out of time while retrying", url=self.url(path))
        logger.debug("Retrying %s %s in %.2fs after %s", method, path, delay, cause)
        if self._on_retry is not None:
            self._on_retry(cause)
        if self.clock.sleep(delay, self._stop):
            raise APIConnectionError(f"{method} {self.url(path)} abandoned: the client is closing", url=self.url(path))

    def error_for(self, response: Union[Response, EventStream]) -> APIStatusError:
        """The typed error for a non-2xx answer, with the credential scrubbed from the excerpt."""
        return status_error(response, self._credential)

    def _finish(self, response: Response, check: bool) -> Response:
        if not check or 200 <= response.status < 300:
            return response
        if response.bare_400:
            raise APIConnectionError(
                f"{response.url} answered 400 with an empty body (a proxy rejection)", url=response.url
            )
        raise self.error_for(response)

    def _call_headers(
        self, method: str, payload: Optional[bytes], extra: Optional[Mapping[str, str]], read_timeout: Optional[float]
    ) -> Dict[str, str]:
        headers = dict(self._base_headers)
        headers["X-API-Key"] = self._credential
        headers["x-stainless-read-timeout"] = str(read_timeout or self.config.timeout)
        if method != "GET":
            headers["X-Idempotency-Key"] = new_idempotency_key()
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if extra:
            headers.update(extra)
        return headers

    def _timeouts(self, read_timeout: Optional[float], deadline: Optional[float]) -> Tuple[float, float]:
        read = read_timeout or self.config.timeout
        connect = self.config.connect_timeout
        if deadline is not None:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise _DeadlineExceeded("the call's deadline passed before it was sent")
            read, connect = min(read, remaining), min(connect, remaining)
        return (connect, read)

    def _send_once(
        self, method: str, path: str, payload: Optional[bytes], headers: Dict[str, str],
        read_timeout: Optional[float], deadline: Optional[float],
    ) -> Response:
        with self._watchdog.watching(deadline):
            try:
                if self._direct:
                    response = self._send_direct(method, path, payload, headers, read_timeout, deadline)
                    if response is not None:
                        return response
                raw = self.open(method, path, payload, headers, read_timeout, deadline)
                try:
                    content = self._read_body(raw, deadline)
                finally:
                    raw.close()
            except APIConnectionError as exc:
                if isinstance(exc, APITimeoutError) or deadline is None or self.clock.monotonic() < deadline:
                    raise
                url = self.url(path)  # the watchdog cut a call that was still reading at its deadline
                raise _DeadlineExceeded(f"{method} {url} ran past the call's deadline", url=url) from None
        return Response(status=raw.status_code, headers=raw.headers, content=content, url=raw.url)

    def _send_direct(
        self, method: str, path: str, payload: Optional[bytes], headers: Dict[str, str],
        read_timeout: Optional[float], deadline: Optional[float],
    ) -> Optional[Response]:
        """One call straight through the adapter's urllib3 pool: half the CPU of the requests path.

        Used when no proxy is configured. The pool is the adapter's own (same TLS settings,
        same tracked connections that ``close()`` aborts). A redirect answer returns None so
        the requests path, which strips credentials across hosts, follows it instead.
        """
        if self._closed:
            raise APIConnectionError("the client is closed", url=self.url(path))
        url = self.url(path)
        try:
            raw = self._direct_pool().send(method, self._path_prefix + path.lstrip("/"), payload, headers,
                                           self._urllib3_timeout(read_timeout, deadline))
        except LIBRARY_ERRORS as exc:
            raise library_error(method, url, exc) from None
        try:
            check_headers(raw, url)
            content = None if raw.status in REDIRECTS else self._read_direct(raw, url, deadline)
        except BaseException:
            raw.close()  # an unread remainder must not go back to the pool
            raise
        finally:
            raw.release_conn()
        if content is None:
            return None
        return Response(status=raw.status, headers=raw.headers, content=content, url=url)

    def _urllib3_timeout(self, read_timeout: Optional[float], deadline: Optional[float]) -> urllib3.Timeout:
        """The call's timeouts as urllib3 takes them; without a deadline they are the same for every
        call with the same read timeout, so those are built once."""
        if deadline is not None:
            connect, read = self._timeouts(read_timeout, deadline)
            return urllib3.Timeout(connect=connect, read=read)
        key = read_timeout or self.config.timeout
        timeout = self._timeout_cache.get(key)
        if timeout is None:
            if len(self._timeout_cache) >= 16:  # read timeouts come from a few policies; never let it grow
                self._timeout_cache.clear()
            timeout = self._timeout_cache[key] = urllib3.Timeout(connect=self.config.connect_timeout, read=key)
        return timeout

    def _direct_pool(self) -> Any:
        """The adapter's pool for the base URL, looked up once (a per-call lookup costs a tenth of a call)."""
        pool = self._pool
        if pool is None or pool.pool is None:  # first use, or the manager closed it (evicted)
            pool = self._pool = self._adapter.get_connection_with_tls_context(
                UrlOnly(self.url("")), self._session.verify  # type: ignore[arg-type]
            )
        return pool

    def _read_direct(self, raw: Any, url: str, deadline: Optional[float]) -> bytes:
        try:
            declared = raw.length_remaining
            if declared is not None and declared <= self.config.max_response_bytes and (
                    "content-encoding" not in raw.headers):
                # A plain body of a known, allowed size (nearly every answer): one read. The
                # watchdog still cuts it at the deadline; the check after catches a late finish.
                content: bytes = raw.read()
                self._check_reading_deadline(url, deadline)
                return content
            return self._collect(raw.stream(_READ_CHUNK, decode_content=True), raw.headers, url, deadline)
        except _DeadlineExceeded:
            raise  # a TimeoutError, so an OSError: it must not pass for a library error (retryable)
        except LIBRARY_ERRORS as exc:
            raise library_error("reading the answer of", url, exc) from None

    def open_stream(
        self, path: str, payload: bytes, headers: Mapping[str, str], read_timeout: float, deadline: Optional[float],
    ) -> EventStream:
        """POST once (no HTTP-layer retries) and return the answer with its body still on the wire.

        A 200 answer's events are read from the returned :class:`EventStream`; any other
        answer's body (at most 64 KiB) is already read and the connection released.
        """
        call_headers = self._call_headers("POST", payload, headers, read_timeout)
        return EventStream(self.open("POST", path, payload, call_headers, read_timeout, deadline))

    def open(
        self, method: str, path: str, payload: Optional[bytes], headers: Mapping[str, str],
        read_timeout: Optional[float], deadline: Optional[float],
    ) -> requests.Response:
        """Send once and return the streaming ``requests`` response (the caller closes it)."""
        if self._closed:
            raise APIConnectionError("the client is closed", url=self.url(path))
        url = self.url(path)
        timeouts = self._timeouts(read_timeout, deadline)
        try:
            response = self._send(method, url, payload, headers, timeouts)
        except LIBRARY_ERRORS as exc:
            raise library_error(method, url, exc) from None
        try:
            check_headers(response.raw, response.url)
        except DecodeError:
            response.close()
            raise
        return response

    def _send(
        self, method: str, url: str, payload: Optional[bytes], headers: Mapping[str, str], timeouts: Tuple[float, float]
    ) -> requests.Response:
        """What ``Session.request`` does, given this session's fixed settings, minus re-merging them.

        The session never reads the environment (``trust_env`` is off) and has no auth, params or
        headers of its own, so merging those on every call only cost CPU (a quarter of a call's).
        Cookies, hooks, proxies, redirects (with ``rebuild_auth``) still go through the session.
        """
        session = self._session
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=method.upper(), url=url, headers={k: v for k, v in headers.items() if v is not None},
            data=payload or {}, params={},
            cookies=merge_cookies(RequestsCookieJar(), session.cookies),  # type: ignore[no-untyped-call]  # untyped stub
            hooks=session.hooks,
        )
        proxies = {k: v for k, v in session.proxies.items() if v is not None}
        return session.send(prepared, timeout=timeouts, allow_redirects=True, stream=True, proxies=proxies,
                            verify=session.verify, cert=session.cert)

    def _read_body(self, raw: requests.Response, deadline: Optional[float]) -> bytes:
        try:
            return self._collect(raw.iter_content(_READ_CHUNK), raw.headers, raw.url, deadline)
        except _DeadlineExceeded:
            raise  # a TimeoutError, so an OSError: it must not pass for a library error (retryable)
        except LIBRARY_ERRORS as exc:
            raise library_error("reading the answer of", raw.url, exc) from None

    def _collect(self, chunks: Iterable[bytes], headers: Mapping[str, str], url: str,
                 deadline: Optional[float]) -> bytes:
        """Join an answer's body, refusing more than ``max_response_bytes`` and reading past ``deadline``."""
        limit = self.config.max_response_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise APIConnectionError(f"{url} answered {declared} bytes, over max_response_bytes={limit}", url=url)
        parts, total = [], 0
        for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise APIConnectionError(f"{url} answered more than max_response_bytes={limit}", url=url)
            self._check_reading_deadline(url, deadline)
            parts.append(chunk)
        return b"".join(parts)

    def _check_reading_deadline(self, url: str, deadline: Optional[float]) -> None:
        if deadline is not None and self.clock.monotonic() > deadline:
            raise _DeadlineExceeded(f"reading the answer of {url} ran past the deadline", url=url)

    def close(self) -> None:
        """Close the pool and abort calls still blocked in a read; idempotent."""
        if not self._closed:
            self._closed = True
            self._stop.set()
            self._adapter.abort_all()
            self._session.close()
            self._watchdog.close()


def _log_connection_retry(exc: APIConnectionError, taken: int, retries: int, delay: float) -> None:
    """The first connection failure of a call at WARNING (a wrong URL or a dead host shows at once,
    with what happens next); the later ones at DEBUG."""
    level = logging.WARNING if taken == 0 else logging.DEBUG
    # The text, not the exception: a kept log record must not keep its traceback (and sockets) alive.
    logger.log(level, "%s; retrying in %.1f s (retry %d of %d)", str(exc), delay, taken + 1, retries)


class _DeadlineExceeded(APITimeoutError):
    """The caller's deadline passed: never retried by the HTTP layer."""


def _encode_body(body: Any) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    encode = getattr(body, "to_json", None)
    return _codec.dumps(encode() if encode is not None else body)
