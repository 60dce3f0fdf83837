"""Running a GenerationPlan: token by token, cancellable, optionally paced and observed.

This is the CPU work of a request; the scheduler runs it on a worker thread (or inline for
the echo model). ``emit`` sees every event as it happens, for streaming:
``("token", sequence_index, index, token_id, logprob)`` then ``("done", sequence_index,
stop_reason, total_tokens)`` per sequence, sequences one after the other.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Literal, Optional, Protocol, Tuple, Union

import attrs

from ..types import PromptAltTokens, SampledSequence, SampleResponse, TensorData, TopkLogprobs
from ._plan import GenerationPlan

__all__ = ["GenerationCancelled", "run_plan", "NEVER_CANCELLED", "CancelFlag", "Event", "Emit"]

# ("token", sequence_index, index, token_id, logprob)
TokenEvent = Tuple[Literal["token"], int, int, int, Optional[float]]
# ("done", sequence_index, stop_reason, total_tokens)
DoneEvent = Tuple[Literal["done"], int, str, int]
Event = Union[TokenEvent, DoneEvent]
Emit = Callable[[Event], None]
_YIELD_EVERY = 512  # tokens between GIL hand-offs of an undelayed generation


class GenerationCancelled(Exception):
    """The request was cancelled while generating."""


class CancelFlag(Protocol):
    """What ``run_plan`` needs of a cancel flag: the read side of a ``threading.Event``."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: Optional[float] = None) -> bool: ...


class _Never:
    """A cancel flag that is never set, for inline runs that cannot be cancelled."""

    @staticmethod
    def is_set() -> bool:
        return False

    @staticmethod
    def wait(timeout: Optional[float] = None) -> bool:
        return False


NEVER_CANCELLED: CancelFlag = _Never()


def run_plan(
    plan: GenerationPlan, cancel: CancelFlag = NEVER_CANCELLED, delay_s: float = 0.0, emit: Optional[Emit] = None
) -> SampleResponse:
    """Generate every sequence of ``plan`` and score the prompt as asked.

    Args:
        plan: the checked request.
        cancel: a ``threading.Event``-like flag checked before every token.
        delay_s: simulated decoding time per token (waited on ``cancel``, so a cancel interrupts it).
        emit: called with each token / done event as it happens.

    Raises:
        GenerationCancelled: ``cancel`` was set.
    """
    sequences = [_run_sequence(plan, index, cancel, delay_s, emit) for index in range(plan.num_samples)]
    model, prompt = plan.model, plan.prompt
    prompt_logprobs = model.prompt_logprobs(prompt) if plan.prompt_logprobs else None
    topk = model.topk_prompt_logprobs(prompt, plan.topk_prompt) if plan.topk_prompt else None
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=_last_n(plan, prompt_logprobs),
        topk_prompt_logprobs=_last_n(plan, topk),
        target_prompt_logprobs=_target_logprobs(plan),
        prompt_alt_tokens=_alternatives(plan),
    )


def _last_n(plan: GenerationPlan, rows: Optional[List[Any]]) -> Optional[List[Any]]:
    """``prompt_logprobs_last_n``: only the last N positions scored, the rest None (both the
    prompt logprobs and the top-k rows, as the official SDK documents)."""
    if rows is None or plan.prompt_logprobs_last_n is None:
        return rows
    keep_from = max(1, len(rows) - plan.prompt_logprobs_last_n)
    return [None if i < keep_from else value for i, value in enumerate(rows)]


def _target_logprobs(plan: GenerationPlan) -> Optional[TensorData]:
    """The logprobs of the asked ids, float32, in the request tensor's shape and layout."""
    target, rows = plan.target, plan.target_rows
    if target is None or rows is None:
        return None
    scored = plan.model.prompt_token_logprobs(plan.prompt, rows)
    if not target.is_sparse:
        return attrs.evolve(target, data=[value for row in scored for value in row], dtype="float32")
    crow, col = target.sparse_crow_indices or [], target.sparse_col_indices or []
    values = [scored[r][col[index]] for r in range(len(crow) - 1) for index in range(crow[r], crow[r + 1])]
    return attrs.evolve(target, data=values, dtype="float32")


def _alternatives(plan: GenerationPlan) -> Optional[PromptAltTokens]:
    if not plan.alt_k:
        return None
    tokens, logprobs = plan.model.prompt_alternatives(plan.prompt, plan.alt_k, plan.params)
    shape = [len(tokens), plan.alt_k]
    return PromptAltTokens(
        tokens=TensorData(data=[t for row in tokens for t in row], dtype="int64", shape=shape),
        logprobs=TensorData(data=[v for row in logprobs for v in row], dtype="float32", shape=list(shape)),
    )


def _run_sequence(
    plan: GenerationPlan, index: int, cancel: CancelFlag, delay_s: float, emit: Optional[Emit]
) -> SampledSequence:
    generation = plan.model.start(plan.prompt, plan.params, index)
    for position, (token, logprob) in enumerate(generation):
        if cancel.wait(delay_s) if delay_s else cancel.is_set():
            raise GenerationCancelled
        if position % _YIELD_EVERY == _YIELD_EVERY - 1:
            time.sleep(0)  # hand the GIL to the event loop: a long generation must not starve it
        if emit is not None:
            emit(("token", index, position, token, logprob))
    stop_reason = generation.stop_reason
    assert stop_reason is not None
    if emit is not None:
        emit(("done", index, stop_reason.value, len(generation.tokens)))
    return SampledSequence(
        tokens=generation.tokens,
        logprobs=generation.logprobs,
        stop_reason=stop_reason,
        topk_logprobs=_sample_topk(plan, generation.tokens),
    )


def _sample_topk(plan: GenerationPlan, tokens: List[int]) -> Optional[List[TopkLogprobs]]:
    """Top-k at each generated position: the prompt scorer run over prompt + completion."""
    if not plan.topk_sample or not tokens:
        return None
    rows = plan.model.topk_prompt_logprobs(plan.prompt + tokens, plan.topk_sample)
    return list(rows[len(plan.prompt) :])
