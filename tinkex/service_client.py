"""ServiceClient: the entry point that owns the session and creates sampling clients."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, Dict, List, Optional

from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config
from ._logging import apply_log_level
from ._policy import PollPolicy, RetryConfig
from ._sampling.pickling import Ownership
from ._session import HEARTBEAT_INTERVAL, Holder
from .errors import APITimeoutError, ClientClosedError
from .sampling_client import SamplingClient
from .types import ServerCapabilities

__all__ = ["ServiceClient"]

logger = logging.getLogger(__name__)


class ServiceClient:
    """A connection to one Tinker service: the session, its heartbeat and shared limits.

    Constructing it sends nothing; the first ``create_sampling_client`` runs the start-up
    handshake. ``close()`` (or leaving a ``with`` block) finishes the session, closes every
    sampling client it created and stops its threads.

    Thread-safety: safe to share between threads.

    Args:
        api_key: the API key (else ``TINKER_API_KEY``); checked before any traffic.
        base_url: the service URL (else ``TINKER_BASE_URL``, else the official one).
        timeout: read timeout in seconds for ordinary calls (60).
        max_retries: HTTP-layer retries for calls that allow them (10).
        project_id: sent with create_session (else ``TINKER_PROJECT_ID``).
        user_metadata: sent with create_session.
        verify: TLS verification (True, False or a CA bundle path); False warns once.
        default_headers: extra headers on every request.
        pickle_api_key: let pickled SamplingClients carry the key to other processes.
        max_response_bytes: the largest answer read from the server (64 MiB); a larger one is
            abandoned as a broken connection after that many bytes.

    Example:
        >>> with tinkex.ServiceClient() as service:  # doctest: +SKIP
        ...     client = service.create_sampling_client(base_model="tinkex/ngram-small")
    """

    def __init__(
        self,
        api_key: Optional[str] = None,
        base_url: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        project_id: Optional[str] = None,
        user_metadata: Optional[Dict[str, Any]] = None,
        verify: Any = None,
        default_headers: Optional[Dict[str, str]] = None,
        pickle_api_key: bool = False,
        max_response_bytes: Optional[int] = None,
        clock: Clock = SYSTEM_CLOCK,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.config = Config.from_env(
            api_key, base_url, timeout=timeout, max_retries=max_retries, project_id=project_id,
            user_metadata=user_metadata, verify=verify, default_headers=default_headers,
            max_response_bytes=max_response_bytes,
        )
        apply_log_level(self.config.log_level)
        self._holder = Holder(self.config, clock=clock, heartbeat_interval=heartbeat_interval)
        self._clock = clock
        self._pickle_api_key = pickle_api_key
        self._clients: List[SamplingClient] = []
        self._lock = threading.Lock()  # guards _clients and _closed

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
        *,
        sampling_session_id: Optional[str] = None,
        queue_state_observer: Any = None,
        max_workers: Optional[int] = None,
        poll_policy: Optional[PollPolicy] = None,
        timeout: Optional[float] = None,
    ) -> SamplingClient:
        """Create a ready SamplingClient (blocks until its initialisation is done).

        Raises:
            APITimeoutError: initialisation took longer than ``timeout`` seconds (it is stopped).
        """
        future = self.create_sampling_client_async(
            model_path, base_model, retry_config, sampling_session_id=sampling_session_id,
            queue_state_observer=queue_state_observer, max_workers=max_workers, poll_policy=poll_policy,
        )
        try:
            return future.result(timeout)
        except FutureTimeoutError:
            if future.done():  # initialisation itself failed with a timeout: that error stands
                raise
            client = self._client_of(future)
            if client is not None:
                client.close()
            raise APITimeoutError(f"the sampling client was not ready within {timeout} s", url=self.config.base_url
                                  ) from None

    def create_sampling_client_async(
        self,
        model_path: Optional[str] = None,
        base_model: Optional[str] = None,
        retry_config: Optional[RetryConfig] = None,
        *,
        sampling_session_id: Optional[str] = None,
        queue_state_observer: Any = None,
        max_workers: Optional[int] = None,
        poll_policy: Optional[PollPolicy] = None,
    ) -> Future[SamplingClient]:
        """Like :meth:`create_sampling_client` but returns a future of the client at once."""
        with self._lock:
            if self._closed:
                raise ClientClosedError("this ServiceClient is closed")
            client = SamplingClient(
                self._holder, base_model=base_model, model_path=model_path,
                sampling_session_id=sampling_session_id, retry_config=retry_config,
                queue_state_observer=queue_state_observer, max_workers=max_workers, poll_policy=poll_policy,
                clock=self._clock, _ownership=Ownership(pickle_api_key=self._pickle_api_key),
            )
            self._clients.append(client)
        return client._ready

    def _client_of(self, future: Future[SamplingClient]) -> Optional[SamplingClient]:
        with self._lock:
            return next((client for client in self._clients if client._ready is future), None)

    def get_server_capabilities(self) -> ServerCapabilities:
        """The models the service offers (no session needed)."""
        answer = self._holder.transport.request("GET", "get_server_capabilities")
        return ServerCapabilities.from_json(answer.json("get_server_capabilities"))

    def close(self, status: str = "success", detail: Optional[str] = None) -> None:
        """Close every sampling client, finish the session and stop all threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients = list(self._clients)
        for client in clients:
            client.close()
        self._holder.close(status, detail)

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
