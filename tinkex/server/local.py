"""``LocalServer``: the local Tinker-compatible server on a background thread it owns."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import secrets
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, TypeVar, Union

from aiohttp import web

from ._connections import ConnectionGuard, GuardedSite
from ._engine import Engine
from ._settings import ServerSettings, split_config_flags
from ._workers import DaemonExecutor
from .app import create_app
from .faults import FaultProfile
from .models import DEFAULT_MODEL, ECHO_MODEL, LanguageModel, load_model

__all__ = ["LocalServer", "DEFAULT_LOCAL_KEY"]

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_KEY = "tml-local"
FaultsLike = Union[None, str, Mapping[str, Any], FaultProfile]
T = TypeVar("T")


class _Running:
    """What exists only while the server runs: its loop, thread, engine and runner."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread: threading.Thread = threading.Thread()
        self.engine: Optional[Engine] = None
        self.runner: Optional[web.AppRunner] = None
        self.sweeper: Optional[asyncio.Task[None]] = None
        self.executor: Optional[DaemonExecutor] = None


class LocalServer:
    """A Tinker-compatible sampling server in this process, on 127.0.0.1 and a free port by default.

    ``start()`` returns once the server accepts connections; ``stop()`` (idempotent) closes it
    and joins its thread, and ``start()`` again serves on the same port with fresh state. The
    thread is a daemon, so a forgotten server never holds up interpreter exit. Safe to use
    from any thread: every call into the running server is handed to its event loop.

    Args:
        host: the address to bind; anything but loopback needs ``api_keys``.
        port: the port, 0 for a free one (kept across restarts).
        models: the model names to serve (loaded on the first ``start``).
        api_keys: the only keys accepted; default any ``tml-`` key.
        admin_key: the key whose ``/admin/stats`` shows every principal (others see their own);
            default a random one, readable as :attr:`admin_key`.
        faults: a fault profile, spec string or JSON object (see :mod:`tinkex.server.faults`).
        token_delay_ms: simulated decoding time per token.
        poll_hold_s: how long a pending ``retrieve_future`` is held.
        max_concurrent_generations: generations at once; more queue as ``paused_capacity``.
        session_expiry_s: sessions without a heartbeat for this long expire.
        promise_expiry_s: unretrieved results are forgotten (410) after this.
        client_config: flags the server announces to clients, e.g.
            ``{"sample_use_retrieve_futures": True, "sample_max_concurrent_requests": 8}``; those
            the protocol serves from ``client/dynamic_config`` (``sample_cancel_enabled``,
            ``sample_cancel_max_batch_size``, ``refresh_interval_sec``) are answered there.
        dynamic_config: ``client/dynamic_config`` flags, e.g. ``{"sample_cancel_enabled": True}``.
        corpus_path: train the n-gram model on this file instead of the Python docs.
        cache_dir: where the trained n-gram model is cached.
        clock: monotonic seconds for expiry and pause windows (tests pass a fake one; long-poll
            holds always use real time).
        **options: any other :class:`~tinkex.server._settings.ServerSettings` field.

    Example:
        >>> import requests
        >>> with LocalServer(models=["tinkex/echo"]) as server:  # doctest: +SKIP
        ...     requests.get(server.base_url + "/api/v1/healthz", headers={"X-API-Key": server.api_key}).json()
        {'status': 'ok'}
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = (DEFAULT_MODEL, ECHO_MODEL),
        api_keys: Optional[Iterable[str]] = None,
        admin_key: Optional[str] = None,
        faults: FaultsLike = None,
        token_delay_ms: float = 0.0,
        poll_hold_s: float = 10.0,
        max_concurrent_generations: int = 4,
        session_expiry_s: float = 300.0,
        promise_expiry_s: float = 600.0,
        client_config: Optional[Dict[str, Any]] = None,
        dynamic_config: Optional[Dict[str, Any]] = None,
        corpus_path: Optional[str] = None,
        cache_dir: Optional[str] = None,
        clock: Optional[Callable[[], float]] = None,
        **options: Any,
    ) -> None:
        client_config, dynamic_config = split_config_flags(client_config, dynamic_config)
        self.settings = ServerSettings(
            host=host,
            port=port,
            api_keys=tuple(api_keys or ()),
            admin_key=admin_key or "tml-admin-" + secrets.token_urlsafe(16),
            token_delay_ms=token_delay_ms,
            poll_hold_s=poll_hold_s,
            max_concurrent_generations=max_concurrent_generations,
            session_expiry_s=session_expiry_s,
            promise_expiry_s=promise_expiry_s,
            client_config=client_config,
            dynamic_config=dynamic_config,
            **options,
        )
        self._model_names = tuple(models)
        self._corpus_path = corpus_path
        self._cache_dir = cache_dir
        self._models: Optional[Dict[str, LanguageModel]] = None
        self._faults = FaultProfile.parse(faults)
        self._port = port
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._running: Optional[_Running] = None

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LocalServer {self.base_url} {state}>"

    @property
    def base_url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def api_key(self) -> str:
        """A key this server accepts: the first configured one, else ``tml-local``."""
        return self.settings.api_keys[0] if self.settings.api_keys else DEFAULT_LOCAL_KEY

    @property
    def admin_key(self) -> str:
        """The key whose ``GET /api/v1/admin/stats`` shows the whole server."""
        admin_key = self.settings.admin_key
        assert admin_key is not None
        return admin_key

    @property
    def is_running(self) -> bool:
        return self._running is not None

    # lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalServer:
        """Bind and serve; returns when connections are accepted. A no-op when running.

        Raises:
            OSError: the port cannot be bound.
            ValidationError: an unknown model name.
        """
        with self._lock:
            if self._running is None:
                self._running = self._launch(self._load_models())
        return self

    def _load_models(self) -> Dict[str, LanguageModel]:
        if self._models is None:
            self._models = {
                name: load_model(name, corpus_path=self._corpus_path, cache_dir=self._cache_dir)
                for name in self._model_names
            }
        return self._models

    def _launch(self, models: Dict[str, LanguageModel]) -> _Running:
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        running = _Running(asyncio.new_event_loop())
        running.thread = threading.Thread(
            target=self._run, args=(running, models, started), name="tinkex-local-server", daemon=True
        )
        running.thread.start()
        try:
            started.result()
        except BaseException:
            running.thread.join()
            raise
        return running

    def _run(
        self, running: _Running, models: Dict[str, LanguageModel], started: concurrent.futures.Future[None]
    ) -> None:
        loop = running.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(running, models))
        except BaseException as exc:
            loop.run_until_complete(self._shutdown(running))
            loop.close()
            started.set_exception(exc)
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown(running))
            loop.close()

    async def _serve(self, running: _Running, models: Dict[str, LanguageModel]) -> None:
        settings = self.settings
        running.executor = DaemonExecutor(settings.max_concurrent_generations, name="tinkex-generate")
        engine = running.engine = Engine(
            settings,
            models,
            loop=asyncio.get_running_loop(),
            executor=running.executor,
            faults=self._faults,
            clock=self._clock,
        )
        guard = ConnectionGuard(
            loop=asyncio.get_running_loop(),
            stats=engine.stats,
            max_per_peer=settings.connection_cap,
            head_timeout_s=settings.head_timeout_s,
            idle_timeout_s=settings.idle_timeout_s,
        )
        running.runner = web.AppRunner(
            create_app(engine, guard),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout_s,
            keepalive_timeout=settings.idle_timeout_s,
        )
        await running.runner.setup()
        site = GuardedSite(running.runner, settings.host, self._port, backlog=1024, guard=guard)
        await site.start()
        self._port = running.runner.addresses[0][1]
        running.sweeper = asyncio.get_running_loop().create_task(_sweep_forever(engine))
        logger.info("tinkex server listening on %s (%s)", self.base_url, settings.describe_keys())

    async def _shutdown(self, running: _Running) -> None:
        if running.sweeper is not None:
            running.sweeper.cancel()
        if running.engine is not None:
            running.engine.stop_generations()
        if running.runner is not None:
            await running.runner.cleanup()
        if running.executor is not None:
            running.executor.shutdown(wait=True, cancel_futures=True)
            for _ in range(3):  # let the workers' last results reach their futures and callbacks
                await asyncio.sleep(0)

    def stop(self) -> None:
        """Stop serving and join the server thread; idempotent. State is lost."""
        with self._lock:
            running, self._running = self._running, None
        if running is None:
            return
        running.loop.call_soon_threadsafe(running.loop.stop)
        running.thread.join()
        logger.info("tinkex server on %s stopped", self.base_url)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # run-time control ---------------------------------------------------------------------

    def set_faults(self, faults: FaultsLike) -> None:
        """Replace the fault profile (now, and for later restarts); None removes every fault."""
        profile = FaultProfile.parse(faults)
        self._faults = profile
        if self._running is not None:
            self._call(lambda engine: engine.set_faults(profile))

    def stats(self) -> Dict[str, Any]:
        """What ``GET /api/v1/admin/stats`` reports."""
        return self._call(lambda engine: engine.snapshot())

    def records(self, sampling_session_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Summaries of the known requests (id, pair, state, generation count), optionally of one sampler."""
        summaries = self._call(lambda engine: engine.records())
        if sampling_session_id is None:
            return summaries
        return [record for record in summaries if record["sampling_session_id"] == sampling_session_id]

    def sweep(self) -> None:
        """Run the expiry sweep now (it also runs on its own about every second)."""
        self._call(lambda engine: engine.sweep())

    def _call(self, fn: Callable[[Engine], T]) -> T:
        running = self._running
        if running is None or running.engine is None:
            raise RuntimeError("the LocalServer is not running")
        engine = running.engine

        async def call() -> T:
            return fn(engine)

        return asyncio.run_coroutine_threadsafe(call(), running.loop).result(timeout=30)


async def _sweep_forever(engine: Engine) -> None:
    settings = engine.settings
    interval = min(
        1.0, max(0.01, min(settings.session_expiry_s, settings.promise_expiry_s, settings.result_retention_s) / 4)
    )
    while True:
        await asyncio.sleep(interval)
        try:
            engine.sweep()
        except Exception:
            logger.exception("expiry sweep failed")
