"""``sample_many`` tells type checkers what it yields (issue 14 item 14): results, what
``postprocess`` makes of them, and exceptions only under ``on_error="record"``."""

from __future__ import annotations

from pathlib import Path

from .test_packaging import mypy_strict, outside  # noqa: F401  (the fixture is used by name)

SCRIPT = """\
from typing import List, Union

import tinkex
from tinkex import types
from tinkex.batch import sample_many


def count(response: types.SampleResponse) -> int:
    return len(response.sequences)


def use(client: tinkex.SamplingClient, prompts: List[types.ModelInput]) -> None:
    params = types.SamplingParams(max_tokens=4)
    reveal_type(sample_many(client, prompts, params))
    reveal_type(sample_many(client, prompts, params, postprocess=count))
    reveal_type(sample_many(client, prompts, params, on_error="record"))
    for result in sample_many(client, prompts, params):
        tokens: List[int] = result.sequences[0].tokens
        del tokens
"""


def test_sample_many_yields_typed_results(outside: Path) -> None:  # noqa: F811
    done = mypy_strict(outside, SCRIPT)
    lines = [line for line in done.stdout.splitlines() if "Revealed type" in line]
    assert len(lines) == 3, done.stdout
    assert lines[0].endswith('Iterator[tinkex.types._sampling.SampleResponse]"'), lines[0]
    assert lines[1].endswith(('Iterator[builtins.int]"', 'Iterator[int]"')), lines[1]
    assert "SampleResponse" in lines[2] and "BaseException" in lines[2] and "Any" not in lines[2], lines[2]
    assert "error" not in done.stdout.replace("Revealed type", ""), done.stdout
