"""The README's compatibility table, built from the official package itself.

``official_names.py`` lists the official SDK's public names (top level, ``tinker.types`` and the
members of its sampling classes) from the side venv. Every name must be provided by tinkex at the
same place, have an equivalent in ``dropin_names.EQUIVALENTS`` (an expression evaluated here), or
be listed as not applicable with a reason; the test fails naming any other. The table rendered
from that must be the one in the README (``TINKEX_WRITE_COMPAT_TABLE=1`` rewrites it).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import tinkex
import tinkex.types

from .dropin_names import EQUIVALENTS, NOT_APPLICABLE

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

# Read at import: the autouse clean_environment fixture clears TINKEX_* before each test.
WRITE = os.environ.get("TINKEX_WRITE_COMPAT_TABLE", "") == "1"
README = Path(__file__).resolve().parents[2] / "README.md"
START = "<!-- compat-table:start -->"
END = "<!-- compat-table:end -->"


@pytest.fixture(scope="module")
def official(official_python: Path) -> Dict[str, Any]:
    script = Path(__file__).with_name("official_names.py")
    done = subprocess.run([str(official_python), str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    answer: Dict[str, Any] = json.loads(done.stdout)
    return answer


def _tinkex_owner(surface: str) -> Any:
    if surface == "tinker":
        return tinkex
    if surface == "tinker.types":
        return tinkex.types
    return getattr(tinkex, surface.split(".", 1)[1], None)


def classify(surfaces: Dict[str, List[str]]) -> Tuple[Dict[str, List[str]], Dict[str, str], Dict[str, List[str]],
                                                      List[str]]:
    """(same-name names per surface, equivalents, not-applicable names per reason, missing names)."""
    not_applicable = {name: reason for reason, names in NOT_APPLICABLE.items() for name in names}
    same: Dict[str, List[str]] = {}
    equivalents: Dict[str, str] = {}
    skipped: Dict[str, List[str]] = {}
    missing: List[str] = []
    for surface, names in surfaces.items():
        owner = _tinkex_owner(surface)
        for name in names:
            qualified = f"{surface}.{name}"
            if qualified in EQUIVALENTS:
                eval(EQUIVALENTS[qualified], {"tinkex": tinkex})  # raises if the equivalent went away
                equivalents[qualified] = EQUIVALENTS[qualified]
            elif owner is not None and hasattr(owner, name):
                assert qualified not in not_applicable, f"{qualified} is provided now: drop it from NOT_APPLICABLE"
                same.setdefault(surface, []).append(name)
            elif qualified in not_applicable:
                skipped.setdefault(not_applicable[qualified], []).append(qualified)
            else:
                missing.append(qualified)
    return same, equivalents, skipped, missing


def render(version: str, same: Dict[str, List[str]], equivalents: Dict[str, str],
           skipped: Dict[str, List[str]]) -> str:
    lines = [START, "",
             f"Built from the official `tinker` {version} package by `tests/compat/test_dropin_table.py`.", "",
             "| official surface | provided by tinkex under the same name |", "| --- | --- |"]
    for surface, names in same.items():
        target = surface.replace("tinker", "tinkex", 1)
        lines.append(f"| `{surface}` → `{target}` | {', '.join(f'`{n}`' for n in names)} |")
    lines += ["", "| official name | tinkex equivalent |", "| --- | --- |"]
    lines += [f"| `{name}` | `{expr}` |" for name, expr in equivalents.items()]
    lines += ["", "| not applicable | official names |", "| --- | --- |"]
    lines += [f"| {reason} | {', '.join(f'`{n}`' for n in names)} |" for reason, names in skipped.items()]
    return "\n".join(lines + ["", END])


def test_every_official_name_is_provided_or_listed_as_not_applicable(official: Dict[str, Any]) -> None:
    surfaces = official["surfaces"]
    same, equivalents, skipped, missing = classify(surfaces)
    assert not missing, f"official names neither provided by tinkex nor listed in dropin_names.py: {missing}"
    listed = set(EQUIVALENTS) | {name for names in NOT_APPLICABLE.values() for name in names}
    official_names = {f"{surface}.{name}" for surface, names in surfaces.items() for name in names}
    assert not listed - official_names, f"dropin_names.py lists names tinker lacks: {sorted(listed - official_names)}"
    for name in ("ModelInput", "SamplingParams", "SampleResponse", "TinkerError", "APIError", "RequestFailedError"):
        assert name in same["tinker"]
    assert set(same["tinker.SamplingClient"]) == set(surfaces["tinker.SamplingClient"])
    table = render(official["version"], same, equivalents, skipped)
    text = README.read_text()
    if WRITE:
        head, _, rest = text.partition(START)
        README.write_text(head + table + rest.partition(END)[2])
        return
    assert START in text and END in text, "README has no compatibility table markers"
    current = START + text.partition(START)[2].partition(END)[0] + END
    assert current == table, "the README's compatibility table is stale: rerun with TINKEX_WRITE_COMPAT_TABLE=1"


def test_a_name_tinkex_lacks_and_does_not_list_is_reported() -> None:
    same, _, skipped, missing = classify({"tinker": ["ModelInput", "TrainingClient", "TotallyNewThing"]})
    assert same == {"tinker": ["ModelInput"]}
    assert missing == ["tinker.TotallyNewThing"]
    assert list(skipped.values()) == [["tinker.TrainingClient"]]
