"""Running a GenerationPlan: token by token, cancellable, optionally paced and observed.

This is the CPU work of a request; the scheduler runs it on a worker thread (or inline for
the echo model). ``emit`` sees every event as it happens, for streaming:
``("token", sequence_index, index, token_id, logprob)`` then ``("done", sequence_index,
stop_reason, total_tokens)`` per sequence, sequences one after the other.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from ..types import SampledSequence, SampleResponse, TopkLogprobs
from ._plan import GenerationPlan

__all__ = ["GenerationCancelled", "run_plan", "NEVER_CANCELLED"]

Emit = Callable[[tuple], None]


class GenerationCancelled(Exception):
    """The request was cancelled while generating."""


class _Never:
    """A cancel flag that is never set, for inline runs that cannot be cancelled."""

    @staticmethod
    def is_set() -> bool:
        return False

    @staticmethod
    def wait(timeout: Optional[float] = None) -> bool:
        return False


NEVER_CANCELLED: Any = _Never()


def run_plan(
    plan: GenerationPlan, cancel: Any = NEVER_CANCELLED, delay_s: float = 0.0, emit: Optional[Emit] = None
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
    if prompt_logprobs is not None and plan.prompt_logprobs_last_n is not None:
        keep_from = max(1, len(prompt_logprobs) - plan.prompt_logprobs_last_n)
        prompt_logprobs = [None if i < keep_from else value for i, value in enumerate(prompt_logprobs)]
    topk = model.topk_prompt_logprobs(prompt, plan.topk_prompt) if plan.topk_prompt else None
    return SampleResponse(sequences=sequences, prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk)


def _run_sequence(
    plan: GenerationPlan, index: int, cancel: Any, delay_s: float, emit: Optional[Emit]
) -> SampledSequence:
    generation = plan.model.start(plan.prompt, plan.params, index)
    for position, (token, logprob) in enumerate(generation):
        if cancel.wait(delay_s) if delay_s else cancel.is_set():
            raise GenerationCancelled()
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
