"""Run a :class:`~tinkex.server.LocalServer` in a child process, for tests that load it hard.

A server in its own process does not share the client's GIL, so a chaos run measures the
client under faults rather than two programs fighting over one interpreter.

Child side: ``python -m tests.reliability.serve_local '<json options>'`` prints the base URL
on one line, then serves until its standard input closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Dict, Optional

import requests

from tinkex.server import LocalServer

ADMIN_KEY = "tml-reliability-admin"


class ServerProcess:
    """A LocalServer in a child process; ``stop()`` (idempotent) ends it.

    Thread-safety: ``stats()`` may be called from any thread; start and stop from one.
    """

    def __init__(self, **options: Any) -> None:
        self.options = {"admin_key": ADMIN_KEY, **options}
        self._child: Optional[subprocess.Popen] = None
        self.base_url = ""

    def start(self) -> ServerProcess:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.serve_local", json.dumps(self.options)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._child.stdout is not None
        line = self._child.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the server process did not start: {line!r}")
        self.base_url = line
        return self

    def stats(self) -> Dict[str, Any]:
        answer = requests.get(self.base_url + "/api/v1/admin/stats", headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        answer.raise_for_status()
        return answer.json()

    def cpu_seconds(self) -> float:
        """User + system CPU the child has used so far (Linux /proc)."""
        assert self._child is not None
        with open(f"/proc/{self._child.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        import os

        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _main() -> None:
    options = json.loads(sys.argv[1])
    with LocalServer(**options) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    _main()
