"""ServiceClient: the entry point that owns the session and creates sampling clients."""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, List, Mapping, Optional

from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config
from ._logging import apply_log_level
from ._policy import PollPolicy, RetryConfig
from ._sampling.future import APIFuture
from ._sampling.pickling import Ownership
from ._session import HEARTBEAT_INTERVAL, Holder
from .errors import APITimeoutError, ClientClosedError, ValidationError
from .sampling_client import SamplingClient
from .telemetry import Telemetry
from .types import ServerCapabilities

__all__ = ["ServiceClient"]

logger = logging.getLogger(__name__)


class ServiceClient:
    """A connection to one Tinker service: the session, its heartbeat and shared limits.

    Constructing it sends nothing; the first ``create_sampling_client`` runs the start-up
    handshake. ``close()`` (or leaving a ``with`` block) finishes the session, closes every
    sampling client it created and stops its threads.

    The first two positional parameters are the official SDK's, ``(user_metadata, project_id)``;
    everything else is a keyword. Keywords neither SDK knows are ignored with a
    ``FutureWarning``, as the official SDK does.

    Thread-safety: safe to share between threads.

    Args:
        user_metadata: sent with create_session.
        project_id: sent with create_session (else ``TINKER_PROJECT_ID``).
        display_name: a human-readable session name, sent with create_session.
        base_url: the service URL (else ``TINKER_BASE_URL``, else the official one).
        api_key: the API key (else ``TINKER_API_KEY``); checked before any traffic.
        default_headers_overrides: headers on every request (the official name; merged over
            ``default_headers``).
        timeout: read timeout in seconds for ordinary calls (60).
        max_retries: HTTP-layer retries for calls that allow them (10).
        verify: TLS verification (True, False or a CA bundle path); False warns once.
        default_headers: extra headers on every request.
        pickle_api_key: let pickled SamplingClients carry the key to other processes.
        max_response_bytes: the largest answer read from the server (64 MiB); a larger one is
            abandoned as a broken connection after that many bytes.

    Example:
        >>> with tinkex.ServiceClient({"experiment": "x"}, api_key="tml-...") as service:  # doctest: +SKIP
        ...     client = service.create_sampling_client(base_model="tinkex/ngram-small")
    """

    def __init__(
        self,
        user_metadata: Optional[Mapping[str, Any]] = None,
        project_id: Optional[str] = None,
        *,
        display_name: Optional[str] = None,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        default_headers_overrides: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        verify: Any = None,
        default_headers: Optional[Mapping[str, str]] = None,
        pickle_api_key: bool = False,
        max_response_bytes: Optional[int] = None,
        clock: Clock = SYSTEM_CLOCK,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        **kwargs: Any,
    ) -> None:
        _warn_unsupported(kwargs)
        _check_positional(user_metadata, project_id, display_name)
        headers = {**(default_headers or {}), **(default_headers_overrides or {})}
        self.config = Config.from_env(
            api_key, base_url, timeout=timeout, max_retries=max_retries, project_id=project_id,
            user_metadata=dict(user_metadata) if user_metadata is not None else None, verify=verify,
            default_headers=headers or None, max_response_bytes=max_response_bytes, display_name=display_name,
        )
        apply_log_level(self.config.log_level)
        self._holder = Holder(self.config, clock=clock, heartbeat_interval=heartbeat_interval)
        self._clock = clock
        self._pickle_api_key = pickle_api_key
        self._clients: List[SamplingClient] = []
        self._lock = threading.Lock()  # guards _clients and _closed
        self._telemetry = Telemetry()
        self._closed = False

    @property
    def session_id(self) -> str:
        """The session id, starting the session if needed."""
        return self._holder.info.session_id

    def create_sampling_client(
        self,
        model_path: Optional[str] = None,
        base_model: Optional[str] = None,
        retry_config: Optional[RetryConfig] = None,
        record_stability_info: bool = False,
        *,
        sampling_session_id: Optional[str] = None,
        queue_state_observer: Any = None,
        max_workers: Optional[int] = None,
        poll_policy: Optional[PollPolicy] = None,
        timeout: Optional[float] = None,
    ) -> SamplingClient:
        """Create a ready SamplingClient (blocks until its initialisation is done).

        The client is also its own future (``.result()`` and ``await`` give it back), so
        official-SDK code that treats the return value as a future of the client works.

        Raises:
            APITimeoutError: initialisation took longer than ``timeout`` seconds (it is stopped).
        """
        client = self._new_client(
            model_path, base_model, retry_config, record_stability_info, sampling_session_id=sampling_session_id,
            queue_state_observer=queue_state_observer, max_workers=max_workers, poll_policy=poll_policy,
        )
        try:
            return client.wait_ready(timeout)
        except FutureTimeoutError:
            if client._ready.done():  # initialisation itself failed with a timeout: that error stands
                raise
            client.close()
            with self._lock:
                others = [other for other in self._clients if other is not client]
            if not any(not other._ready.done() for other in others):
                self._holder.abandon_start()  # nobody else waits for the start-up: stop it too
            raise APITimeoutError(f"the sampling client was not ready within {timeout} s", url=self.config.base_url
                                  ) from None

    def create_sampling_client_async(
        self,
        model_path: Optional[str] = None,
        base_model: Optional[str] = None,
        retry_config: Optional[RetryConfig] = None,
        record_stability_info: bool = False,
        *,
        sampling_session_id: Optional[str] = None,
        queue_state_observer: Any = None,
        max_workers: Optional[int] = None,
        poll_policy: Optional[PollPolicy] = None,
    ) -> APIFuture[SamplingClient]:
        """Like :meth:`create_sampling_client` but returns a future of the client at once.

        The future is a ``concurrent.futures.Future`` that can also be awaited: ``await
        service.create_sampling_client_async(...)`` gives the ready client.
        """
        return self._new_client(
            model_path, base_model, retry_config, record_stability_info, sampling_session_id=sampling_session_id,
            queue_state_observer=queue_state_observer, max_workers=max_workers, poll_policy=poll_policy,
        )._ready

    def _new_client(
        self, model_path: Optional[str], base_model: Optional[str], retry_config: Optional[RetryConfig],
        record_stability_info: bool, *, sampling_session_id: Optional[str], queue_state_observer: Any,
        max_workers: Optional[int], poll_policy: Optional[PollPolicy],
    ) -> SamplingClient:
        """A SamplingClient of this session, its initialisation started (not awaited)."""
        with self._lock:
            if self._closed:
                raise ClientClosedError("this ServiceClient is closed")
            client = SamplingClient(
                self._holder, base_model=base_model, model_path=model_path,
                sampling_session_id=sampling_session_id, retry_config=retry_config,
                queue_state_observer=queue_state_observer, max_workers=max_workers, poll_policy=poll_policy,
                clock=self._clock, record_stability_info=record_stability_info,
                _ownership=Ownership(pickle_api_key=self._pickle_api_key),
            )
            client.get_telemetry().add_listener(self._count)
            self._clients.append(client)
        return client

    def _count(self, event: str, fields: Mapping[str, Any]) -> None:
        self._telemetry.record(event, **fields)


    def get_server_capabilities(self) -> ServerCapabilities:
        """The models the service offers (no session needed)."""
        answer = self._holder.transport.request("GET", "get_server_capabilities")
        return ServerCapabilities.from_json(answer.json("get_server_capabilities"))

    async def get_server_capabilities_async(self) -> ServerCapabilities:
        """:meth:`get_server_capabilities` as a coroutine: the blocking call runs in the running
        loop's default executor, so the loop is not blocked."""
        return await asyncio.get_running_loop().run_in_executor(None, self.get_server_capabilities)

    def get_telemetry(self) -> Telemetry:
        """Counters and latency percentiles summed over every SamplingClient this service created."""
        return self._telemetry

    def close(self, status: str = "success", detail: Optional[str] = None) -> APIFuture[None]:
        """Close every sampling client, finish the session and stop all threads; idempotent.

        Returns when done; the returned future is already finished (the official SDK's
        ``close(...)`` returns a future, so ``close("success").result()`` works here too).
        """
        with self._lock:
            closed, self._closed = self._closed, True
            clients = list(self._clients)
        if not closed:
            for client in clients:
                client.close()
            self._holder.close(status, detail)
        done: APIFuture[None] = APIFuture()
        done.set_result(None)
        return done

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("success")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("errored", str(exc)[:500])

    def __repr__(self) -> str:
        return f"<ServiceClient {self.config.base_url}>"


def _warn_unsupported(kwargs: Mapping[str, Any]) -> None:
    if kwargs:
        warnings.warn(f"ServiceClient ignores unsupported arguments: {', '.join(sorted(kwargs))}", FutureWarning,
                      stacklevel=3)


def _check_positional(user_metadata: Any, project_id: Any, display_name: Any) -> None:
    """Reject the pre-0.2 positional form ``ServiceClient(api_key, base_url)`` with a clear error
    (the first two positional parameters are now the official SDK's); the value is never shown,
    as it may be an API key."""
    if user_metadata is not None and not isinstance(user_metadata, Mapping):
        raise ValidationError(
            f"user_metadata must be a dict, got {type(user_metadata).__name__}: ServiceClient's positional "
            "parameters are (user_metadata, project_id) as in the official SDK; pass api_key= and base_url= "
            "as keywords", field="user_metadata", value=type(user_metadata).__name__)
    for name, value in (("project_id", project_id), ("display_name", display_name)):
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"{name} must be a str, got {type(value).__name__}", field=name,
                                  value=type(value).__name__)
