"""The local server's simulated decoding time (``--token-delay-ms``): how a generation waits.

A streamed generation waits the delay before each token (the client sees tokens arrive one by
one); a generation read whole waits the same total once, after generating, so thousands in
flight do not wake the server ten times a second each. Both waits are on the cancel flag, so a
cancel interrupts either. The flag here records the waits instead of sleeping.
"""

from __future__ import annotations

from typing import List, Optional

import pytest

from tinkex.server._generate import NEVER_CANCELLED, GenerationCancelled, run_plan
from tinkex.server._plan import GenerationPlan
from tinkex.server.models import ECHO_MODEL, load_model
from tinkex.types import SamplingParams

DELAY_S = 0.1
TOKENS = 12


class RecordingFlag:
    """A cancel flag that records every wait; ``cancel_on_wait`` makes wait number N report a cancel."""

    def __init__(self, cancel_on_wait: Optional[int] = None) -> None:
        self.waits: List[float] = []
        self.cancel_on_wait = cancel_on_wait

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: Optional[float] = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        return self.cancel_on_wait is not None and len(self.waits) >= self.cancel_on_wait


def plan() -> GenerationPlan:
    params = SamplingParams(max_tokens=TOKENS, seed=3, temperature=1.0)
    return GenerationPlan(model=load_model(ECHO_MODEL), prompt=list(range(40, 80)), params=params)


def test_an_answer_read_whole_waits_the_whole_delay_once() -> None:
    flag = RecordingFlag()
    response = run_plan(plan(), flag, DELAY_S)
    generated = len(response.sequences[0].tokens)
    assert generated == TOKENS
    assert len(flag.waits) == 1
    # the time spent generating counts towards the delay, so the wait is at most the total
    assert generated * DELAY_S - 0.5 < flag.waits[0] <= generated * DELAY_S


def test_a_streamed_answer_waits_before_each_token() -> None:
    flag, events = RecordingFlag(), []
    response = run_plan(plan(), flag, DELAY_S, emit=events.append)
    tokens = [event for event in events if event[0] == "token"]
    assert len(tokens) == len(response.sequences[0].tokens) == TOKENS
    assert flag.waits == [DELAY_S] * TOKENS


@pytest.mark.parametrize("streamed", [False, True])
def test_a_cancel_during_the_wait_stops_the_generation(streamed: bool) -> None:
    flag = RecordingFlag(cancel_on_wait=1)
    with pytest.raises(GenerationCancelled):
        run_plan(plan(), flag, DELAY_S, emit=(lambda event: None) if streamed else None)
    assert len(flag.waits) == 1


def test_no_delay_never_waits() -> None:
    flag = RecordingFlag()
    run_plan(plan(), flag, 0.0)
    assert flag.waits == []


def test_without_a_cancel_flag_a_delayed_generation_is_never_cancelled() -> None:
    # the default flag (inline runs, which the scheduler gives no delay) can never be set
    response = run_plan(plan(), delay_s=DELAY_S)
    assert len(response.sequences[0].tokens) == TOKENS
    assert NEVER_CANCELLED.wait(DELAY_S) is False and not NEVER_CANCELLED.is_set()
