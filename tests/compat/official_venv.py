"""The side virtualenv holding the official ``tinker`` SDK, built once and reused.

The official SDK cannot share tinkex's environment (it pins its own httpx, pydantic,
protobuf...), so it lives in ``.venv-tinker/`` at the repository root (git-ignored through
``.venv-*/``). Used by the compat tests and by ``bench/client_overhead.py --official``.

Run ``python tests/compat/official_venv.py`` to build it by hand; it prints the interpreter path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ["OFFICIAL_VERSION", "OfficialSDKUnavailable", "ensure_official_venv", "default_venv_dir"]

OFFICIAL_VERSION = "0.38.0"  # the version protocol.md describes; bump both together
MIN_PYTHON = (3, 11)  # tinker 0.38.0 declares Requires-Python >=3.11
_PIP_TIMEOUT_S = 600
_CANDIDATE_PYTHONS = ("python3.13", "python3.12", "python3.11", "python3")


class OfficialSDKUnavailable(RuntimeError):
    """The side virtualenv could not be built (no suitable Python, or PyPI unreachable)."""


def default_venv_dir() -> Path:
    """``$TINKEX_TINKER_VENV`` if set, else ``<repo>/.venv-tinker``."""
    override = os.environ.get("TINKEX_TINKER_VENV")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / ".venv-tinker"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def installed_version(venv: Path) -> Optional[str]:
    """The ``tinker`` version installed in ``venv``, or None when it is missing or broken."""
    python = venv_python(venv)
    if not python.exists():
        return None
    probe = "import importlib.metadata as m; print(m.version('tinker'))"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_official_venv(venv: Optional[Path] = None, version: str = OFFICIAL_VERSION) -> Path:
    """Return the side venv's interpreter, building the venv when missing or at another version.

    The venv is built next to its final place and renamed into it, so an interrupted build
    never leaves a half-installed venv that later runs would trust.

    Raises:
        OfficialSDKUnavailable: no Python >= 3.11 was found, or pip could not install
            ``tinker==version`` (typically: PyPI unreachable).
    """
    venv = venv or default_venv_dir()
    if installed_version(venv) == version:
        return venv_python(venv)
    staging = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _build(staging, version)
        _swap_into_place(staging, venv)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return venv_python(venv)


def _build(staging: Path, version: str) -> None:
    base = _base_python()
    _run([base, "-m", "venv", str(staging)], f"creating a virtualenv with {base}")
    pip = [str(venv_python(staging)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--retries", "2", "--timeout", "30", f"tinker=={version}"]
    _run(pip, f"installing tinker=={version} from PyPI (is PyPI reachable? TINKEX_SKIP_COMPAT=1 skips these tests)")


def _swap_into_place(staging: Path, venv: Path) -> None:
    if venv.exists():
        stale = venv.with_name(f"{venv.name}.stale-{os.getpid()}")
        venv.rename(stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        staging.rename(venv)
    except OSError:
        # Another process finished its build first: use theirs if it is the right one.
        if installed_version(venv) is None:
            raise


def _base_python() -> str:
    if sys.version_info[:2] >= MIN_PYTHON:
        return getattr(sys, "_base_executable", None) or sys.executable
    for name in _CANDIDATE_PYTHONS:
        found = shutil.which(name)
        if found and _version_of(found) >= MIN_PYTHON:
            return found
    wanted = ".".join(map(str, MIN_PYTHON))
    raise OfficialSDKUnavailable(
        f"the official tinker SDK needs Python >= {wanted}, and none was found on PATH "
        f"(tried {', '.join(_CANDIDATE_PYTHONS)}); TINKEX_SKIP_COMPAT=1 skips these tests"
    )


def _version_of(python: str) -> tuple:
    try:
        done = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=30)
        return tuple(int(part) for part in done.stdout.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return ()


def _run(command: List[str], what: str) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise OfficialSDKUnavailable(f"{what}: timed out after {_PIP_TIMEOUT_S} s") from None
    if done.returncode != 0:
        noise = "is neither a file nor a directory"  # pip's notes about absent local mirrors
        lines = [line for line in (done.stdout + done.stderr).splitlines() if noise not in line]
        tail = "\n".join(lines[-15:])
        raise OfficialSDKUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")


if __name__ == "__main__":
    print(ensure_official_venv())
