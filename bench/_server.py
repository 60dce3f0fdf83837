"""Start the local server in its own process for a benchmark (so its CPU is never the client's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
API_KEY = "tml-bench"
MODEL = "tinkex/echo"


def start_server(extra_args: Sequence[str] = (), preexec_fn: Optional[Callable[[], None]] = None
                 ) -> Tuple[subprocess.Popen, str]:
    """Run ``python -m tinkex.server`` with the echo model on a free port; return it and its URL."""
    command = [sys.executable, "-m", "tinkex.server", "--port", "0", "--model", MODEL, "--log-level", "WARNING",
               "--api-key", API_KEY, *extra_args]  # fmt: skip
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=preexec_fn)
    assert child.stdout is not None
    banner = child.stdout.readline()
    if not banner.startswith("tinkex server on "):
        child.kill()
        raise RuntimeError(f"the server did not start: {banner!r}")
    return child, banner.split()[3]


def official_python() -> Optional[Path]:
    """The official SDK's side-venv interpreter (built on first use, as for the compat tests), or None."""
    sys.path.insert(0, str(REPO))
    from tests.compat.official_venv import OfficialSDKUnavailable, ensure_official_venv

    try:
        return ensure_official_venv()
    except OfficialSDKUnavailable as exc:
        print(f"# official SDK not measured: {exc}", file=sys.stderr)
        return None
