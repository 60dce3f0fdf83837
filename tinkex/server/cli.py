"""``tinkex serve``: run the local Tinker-compatible server until Ctrl-C (or SIGTERM).

Example:
    $ tinkex serve --port 8000 --model tinkex/echo --faults "seed=1,asample.500=0.05"
    tinkex server on http://127.0.0.1:8000 (models: tinkex/echo)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence

from .._help import DefaultsHelpFormatter
from ..errors import ValidationError
from ._settings import parse_config_flag
from .local import LocalServer
from .models import available_models

__all__ = ["main", "build_parser"]


def build_parser(prog: str = "tinkex serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run a local Tinker-compatible sampling server.",
                                     formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs --api-key)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (0 = a free one)")
    parser.add_argument(
        "--model", action="append", dest="models", metavar="NAME",
        help=f"model to serve, repeatable (default: all of {', '.join(available_models())})",
    )  # fmt: skip
    parser.add_argument(
        "--faults", metavar="SPEC", help="fault profile: a spec string or JSON (see tinkex.server.faults)"
    )
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="KEY", help="accepted key, repeatable")
    parser.add_argument(
        "--admin-key", metavar="KEY", help="key whose /api/v1/admin/stats shows every key's sessions (default: random)"
    )
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="simulated decoding time per token")
    parser.add_argument("--corpus", metavar="FILE", help="train the n-gram model on FILE instead of the Python docs")
    parser.add_argument("--cache-dir", metavar="DIR", help="where the trained n-gram model is cached")
    parser.add_argument("--poll-hold-s", type=float, default=10.0, help="how long a pending poll is held")
    parser.add_argument("--max-concurrent-generations", type=int, default=4, help="generations at once")
    parser.add_argument("--session-expiry-s", type=float, default=300.0, help="session lifetime without heartbeats")
    parser.add_argument("--promise-expiry-s", type=float, default=600.0, help="lifetime of an unretrieved result")
    parser.add_argument(
        "--client-config", action="append", dest="client_config", metavar="KEY=VALUE", default=[],
        help="announce a client-config flag, VALUE as JSON; repeatable "
             "(e.g. sample_use_retrieve_futures=true sample_max_concurrent_requests=64 sample_cancel_enabled=true)",
    )  # fmt: skip
    parser.add_argument(
        "--max-connections-per-peer", type=int, metavar="N",
        help="open connections per client address; more are answered 429 (default: from the descriptor limit)",
    )  # fmt: skip
    parser.add_argument("--jwt", action="store_true", help="ask clients to exchange their key for a JWT")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def _server(args: argparse.Namespace) -> LocalServer:
    models = args.models or available_models()
    return LocalServer(
        host=args.host,
        port=args.port,
        models=models,
        api_keys=args.api_keys,
        admin_key=args.admin_key,
        faults=args.faults,
        token_delay_ms=args.token_delay_ms,
        poll_hold_s=args.poll_hold_s,
        max_concurrent_generations=args.max_concurrent_generations,
        session_expiry_s=args.session_expiry_s,
        promise_expiry_s=args.promise_expiry_s,
        corpus_path=args.corpus,
        cache_dir=args.cache_dir,
        jwt_enabled=args.jwt,
        client_config=dict(parse_config_flag(text) for text in args.client_config),
        max_connections_per_peer=args.max_connections_per_peer,
    )


class _StopSignals:
    """SIGTERM (and, once serving, SIGINT) as a byte written to a pipe the main thread reads.

    A signal handler may interrupt itself: GNU ``timeout`` sends SIGTERM twice in a row, and a
    handler that takes a lock (``threading.Event.set`` does) deadlocks when the second signal
    lands while the first holds it. Writing to a non-blocking pipe takes no lock, so any number
    of signals, at any moment, only add bytes. Main thread only (``install`` is a no-op elsewhere).
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous: Dict[int, Any] = {}

    def install(self, signum: int) -> None:
        if threading.current_thread() is threading.main_thread() and signum not in self._previous:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        try:
            os.write(self._write_fd, b"\0")
        except OSError:  # the pipe is full (a signal storm) or closed: one byte is enough
            pass

    def wait(self) -> None:
        """Block until a signal arrived (KeyboardInterrupt from a default SIGINT handler propagates)."""
        os.read(self._read_fd, 1)

    def release(self, *, stopping: bool = False) -> None:
        """Restore the handlers found at install and close the pipe. When ``stopping`` (we exit
        because of a signal), a late duplicate of a default-handled signal is ignored rather
        than killing the process during its own orderly exit."""
        for signum, previous in self._previous.items():
            default = previous in (signal.SIG_DFL, None)
            signal.signal(signum, signal.SIG_IGN if stopping and default else previous)
        self._previous.clear()
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)


def _raise_descriptor_limit(wanted: int = 65536) -> None:
    """Lift this process's soft descriptor limit towards the hard one, so that the server's
    per-peer connection cap (derived from it) is not a few hundred on systems whose default soft
    limit is 1024. Only the command does this; an embedded ``LocalServer`` leaves the process alone."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, OSError, ValueError):  # no resource module, or not allowed: keep the limit
        pass


def _banner(server: LocalServer, args: argparse.Namespace) -> None:
    models: List[str] = args.models or available_models()
    print(f"tinkex server on {server.base_url} (models: {', '.join(models)})", flush=True)
    if not args.api_keys:
        print(f"accepting any API key starting with 'tml-', e.g. TINKER_API_KEY={server.api_key}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the server until interrupted; returns the exit status (2 for bad arguments, 130 for
    Ctrl-C before the server was up)."""
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    signals = _StopSignals()
    signals.install(signal.SIGTERM)  # before start: a SIGTERM during model loading stops us once up
    _raise_descriptor_limit()
    try:
        server = _server(args)
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        server.start()
    except (ValidationError, OSError) as exc:
        signals.release()
        print(f"tinkex serve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signals.release()
        return 130
    try:
        signals.install(signal.SIGINT)  # a second Ctrl-C while stopping must not interrupt stop()
        _banner(server, args)
        signals.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("tinkex server stopped", flush=True)
    signals.release(stopping=True)
    return 0
