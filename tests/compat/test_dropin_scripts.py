"""Scripts written for the official SDK run on tinkex after changing only the import.

Each script in ``scripts/`` is in the style of the official docs or cookbook (sync and asyncio)
and asserts what it relies on. It runs twice against the same local server: as written, with the
official ``tinker`` SDK from the side venv (the oracle), and with ``import tinker`` /
``from tinker import`` rewritten to tinkex. Both runs must exit 0 and print the same JSON
(seeded sampling is deterministic, so tokens and logprobs must agree exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest

from tinkex.server import LocalServer

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

SCRIPTS = Path(__file__).with_name("scripts")
ALL_SCRIPTS = sorted(path.name for path in SCRIPTS.glob("*.py"))


def as_tinkex(source: str) -> str:
    """The user's whole change: the import lines, and nothing else."""
    lines = source.splitlines(keepends=True)
    out = []
    for line in lines:
        if line == "import tinker\n":
            line = "import tinkex as tinker\n"
        elif line.startswith("from tinker import "):
            line = line.replace("from tinker import ", "from tinkex import ", 1)
        out.append(line)
    assert sum(a != b for a, b in zip(lines, out)) >= 1, "a drop-in script must import tinker"
    return "".join(out)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(models=["tinkex/ngram-small"]) as local:
        yield local


def _env(server: LocalServer) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_", "PYTHON"))}
    env.update(TINKER_BASE_URL=server.base_url, TINKER_API_KEY=server.api_key, TINKER_TELEMETRY="0")
    return env


def _run(python: str, script: Path, env: Dict[str, str], who: str) -> Any:
    done = subprocess.run([python, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, f"{script.name} failed under {who}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def test_only_the_import_lines_change() -> None:
    source = "import json\n\nimport tinker\nfrom tinker import types\n\nprint(tinker.__name__)\n"
    expected = "import json\n\nimport tinkex as tinker\nfrom tinkex import types\n\nprint(tinker.__name__)\n"
    assert as_tinkex(source) == expected
    assert len(ALL_SCRIPTS) >= 4


@pytest.mark.parametrize("name", ALL_SCRIPTS)
def test_script_runs_under_both_sdks_with_the_same_results(
    name: str, official_python: Path, server: LocalServer, tmp_path: Path
) -> None:
    script = SCRIPTS / name
    env = _env(server)
    official = _run(str(official_python), script, env, "the official tinker SDK")
    ours_path = tmp_path / name
    ours_path.write_text(as_tinkex(script.read_text()))
    ours = _run(sys.executable, ours_path, env, "tinkex (import tinkex as tinker)")
    assert ours == official
