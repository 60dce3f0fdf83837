"""A user's script outside the repository type-checks against the installed tinkex (issue 14 item 17).

``make install`` installs tinkex in editable mode; setuptools' default editable mode for a flat
layout is an import hook that mypy cannot follow, so ``mypy --strict user_script.py`` outside
the checkout used to report ``Cannot find implementation or library stub for module named
"tinkex"``. The same check by hand::

    cd /tmp && printf 'import tinkex\\nprint(tinkex.__version__)\\n' > user_script.py
    /path/to/tinkex/.venv/bin/mypy --strict user_script.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
import tinkex
from tinkex import types

def params(seed: int) -> types.SamplingParams:
    return types.SamplingParams(max_tokens=8, seed=seed)

def connect(url: str) -> tinkex.ServiceClient:
    return tinkex.ServiceClient(api_key="tml-x", base_url=url)

version: str = tinkex.__version__
"""

BAD = """\
from tinkex import types

count: int = types.SamplingParams(max_tokens=8)
"""


def mypy_strict(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
         str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    assert REPO not in tmp_path.parents  # the point: mypy cannot find tinkex by looking around the script
    return tmp_path


def test_mypy_strict_sees_the_installed_tinkex(outside: Path) -> None:
    done = mypy_strict(outside, GOOD)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout


def test_mypy_strict_checks_calls_against_tinkex_types(outside: Path) -> None:
    done = mypy_strict(outside, BAD)
    assert done.returncode == 1
    assert 'Incompatible types in assignment (expression has type "SamplingParams", variable has type "int")' \
        in done.stdout, done.stdout
    assert "Cannot find implementation or library stub" not in done.stdout
