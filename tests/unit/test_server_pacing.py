"""The local server's simulated decoding time (``--token-delay-ms``) inside a generation.

``run_plan`` waits the delay before each token it generates, on the cancel flag, so a cancel
interrupts it; the scheduler gives it the delay only for a streamed answer (the client sees the
tokens arrive one by one). An answer read whole is generated at once and waits its decoding
time on an event-loop timer instead (tested in ``test_server_store.py``). The flag here records
the waits instead of sleeping.
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


def test_each_token_waits_the_delay_first() -> None:
    flag = RecordingFlag()
    response = run_plan(plan(), flag, DELAY_S)
    assert len(response.sequences[0].tokens) == TOKENS
    assert flag.waits == [DELAY_S] * TOKENS


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
