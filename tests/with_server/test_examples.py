"""Every example runs as a new user would run it (a subprocess, local server in-process) and says the right things."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> List[str]:
    env = dict(os.environ)  # TINKER_* already removed: the examples start their own local server
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          timeout=100)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def check_quickstart(lines: List[str]) -> None:
    assert [line[:3] for line in lines if line[:1].isdigit()] == ["1. ", "2. ", "3. "]
    assert all("A list comprehension" in line for line in lines if line[:1].isdigit())


def check_stream(lines: List[str]) -> None:
    assert lines[0].startswith("[tinkex/ngram-small] The Python interpreter")
    streamed = re.fullmatch(r"\((\d+) characters streamed in [\d.]+ s; set-up took [\d.]+ s\)", lines[-1])
    assert streamed and int(streamed.group(1)) > 50


def check_scores(lines: List[str]) -> None:
    assert [line.strip() for line in lines if "best:" in line][0] == "best: statement"
    assert sum("best:" in line for line in lines) == 3
    blocks = "\n".join(lines).split("...")[1:]
    for block in blocks:
        scores = [float(match) for match in re.findall(r"^\s+(-\d+\.\d+)\s", block, re.MULTILINE)]
        assert len(scores) >= 3 and scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)


def check_batch(lines: List[str]) -> None:
    assert lines[:4] == [line for line in lines if " done, accuracy so far " in line][:4]
    result = re.fullmatch(r"accuracy (\d+)/200 = [\d.]+%; \d+ samples/s over [\d.]+ s", lines[-1])
    assert result, lines[-1]
    assert int(result.group(1)) >= 20  # a broken decode or comparison scores ~0


def check_observer(lines: List[str]) -> None:
    paused = [line for line in lines if ": paused_capacity (" in line]
    assert 1 <= len(paused) <= 3 and all("req" in line for line in paused)
    assert sum(line.endswith("a sample completed") for line in lines) == 3
    summary = re.fullmatch(r"3 samples done after [\d.]+ s; the observer saw (\d+) changes", lines[-1])
    assert summary and int(summary.group(1)) == len(paused)


CHECKS: Dict[str, Callable[[List[str]], None]] = {
    "quickstart.py": check_quickstart,
    "quickstart_stream.py": check_stream,
    "score_answers.py": check_scores,
    "batch_eval.py": check_batch,
    "queue_observer.py": check_observer,
}


def test_every_example_is_checked() -> None:
    found = {path.name for path in EXAMPLES.glob("*.py") if not path.name.startswith("_")}
    assert found == set(CHECKS)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs(name: str) -> None:
    CHECKS[name](run_example(name))


def test_the_streaming_demo_takes_a_prompt() -> None:
    lines = run_example("quickstart_stream.py", "Dictionaries", "map")
    assert lines[0].startswith("[tinkex/ngram-small] Dictionaries map")
