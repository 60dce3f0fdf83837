"""Checking a decoded SampleRequest against a model: a GenerationPlan, or a 400 naming the problem."""

from __future__ import annotations

from typing import List, Optional

import attrs

from ..types import EncodedTextChunk, SampleRequest, SamplingParams, TensorData
from ._problems import bad_request
from ._settings import ServerSettings
from .models import LanguageModel, check_token_ids

__all__ = ["GenerationPlan", "plan_request"]


@attrs.frozen
class GenerationPlan:
    """Everything a worker needs to generate one request; immutable once checked.

    ``target`` is the request's ``target_prompt_logprobs`` tensor (checked: int64, 2-D, one row
    per prompt position after the first) and ``target_rows`` its dense rows (``-1`` = nothing
    asked); ``alt_k`` is ``prompt_alt_tokens_k``.
    """

    model: LanguageModel = attrs.field(eq=False, repr=False)
    prompt: List[int]
    params: SamplingParams
    num_samples: int = 1
    prompt_logprobs: bool = False
    topk_prompt: int = 0
    topk_sample: int = 0
    prompt_logprobs_last_n: Optional[int] = None
    target: Optional[TensorData] = None
    target_rows: Optional[List[List[int]]] = None
    alt_k: int = 0
    work_tokens: int = 0

    @property
    def is_cheap(self) -> bool:
        return self.model.is_cheap


def _prompt_tokens(request: SampleRequest, model: LanguageModel) -> List[int]:
    tokens: List[int] = []
    for index, chunk in enumerate(request.prompt.chunks):
        if not isinstance(chunk, EncodedTextChunk):
            raise bad_request(
                f"prompt.chunks[{index}] is a {chunk.type!r} chunk; model {model.name!r} accepts only encoded_text"
            )
        tokens.extend(chunk.tokens)
    if len(tokens) > model.max_context_length:
        raise bad_request(
            f"prompt has {len(tokens)} tokens, longer than model {model.name!r}'s context of {model.max_context_length}"
        )
    vocab = model.vocab_size
    if tokens and max(tokens) >= vocab:
        position, bad = next((i, t) for i, t in enumerate(tokens) if t >= vocab)
        raise bad_request(
            f"prompt token {bad} at position {position} is outside model {model.name!r}'s vocabulary [0, {vocab})"
        )
    return tokens


def _check_limits(request: SampleRequest, model: LanguageModel, settings: ServerSettings) -> None:
    if request.num_samples > settings.max_num_samples:
        raise bad_request(
            f"num_samples={request.num_samples} exceeds this server's limit of {settings.max_num_samples}"
        )
    max_tokens = request.sampling_params.max_tokens
    if max_tokens is not None and max_tokens > model.max_context_length:
        raise bad_request(
            f"max_tokens={max_tokens} exceeds model {model.name!r}'s context of {model.max_context_length}"
        )
    for field in ("topk_prompt_logprobs", "topk_sample_logprobs"):
        value = getattr(request, field)
        if value < 0 or value > settings.max_topk:
            raise bad_request(f"{field}={value} must be in [0, {settings.max_topk}]")
    if not 0 <= request.prompt_alt_tokens_k <= settings.max_topk:
        raise bad_request(f"prompt_alt_tokens_k={request.prompt_alt_tokens_k} must be in [0, {settings.max_topk}]")


def _work_tokens(request: SampleRequest, prompt: List[int], model: LanguageModel, settings: ServerSettings) -> int:
    """The most tokens the request can generate; a 400 naming the fields when over the cap."""
    per_sample = model.generation_limit(len(prompt), request.sampling_params)
    work = request.num_samples * per_sample
    if work > settings.max_request_tokens:
        max_tokens = request.sampling_params.max_tokens
        asked = f"max_tokens={max_tokens}" if max_tokens is not None else f"the default length of {per_sample}"
        raise bad_request(
            f"num_samples={request.num_samples} times {asked} is {work} tokens, more than this server's "
            f"limit of {settings.max_request_tokens} per request; ask for fewer samples or tokens"
        )
    return work


def _last_n(request: SampleRequest, prompt: List[int]) -> Optional[int]:
    value = request.prompt_logprobs_last_n
    if value is None:
        return None
    if not request.prompt_logprobs:
        raise bad_request("prompt_logprobs_last_n requires prompt_logprobs=true")
    if not 1 <= value <= len(prompt) - 1:
        raise bad_request(
            f"prompt_logprobs_last_n={value} must be in [1, len(prompt) - 1] = [1, {len(prompt) - 1}]"
        )
    return value


def _target_rows(request: SampleRequest, prompt: List[int], model: LanguageModel) -> Optional[List[List[int]]]:
    target = request.target_prompt_logprobs
    if target is None:
        return None
    target.check("target_prompt_logprobs")
    shape = target.shape or []
    if target.dtype != "int64" or len(shape) != 2 or shape[0] != max(0, len(prompt) - 1):
        raise bad_request(
            f"target_prompt_logprobs must be an int64 tensor of shape [len(prompt) - 1, K] = "
            f"[{max(0, len(prompt) - 1)}, K], got {target.dtype} {shape}"
        )
    rows = [[int(token) for token in row] for row in target.rows(fill=-1)]
    check_token_ids(rows, model.vocab_size)
    if all(token == -1 for row in rows for token in row):
        raise bad_request("target_prompt_logprobs names no token id (every cell is -1)")
    return rows


def plan_request(request: SampleRequest, model: LanguageModel, settings: ServerSettings) -> GenerationPlan:
    """Check ``request`` against ``model`` and the server's limits.

    Raises:
        Problem: 400 naming the offending field and value.
        ValidationError: a malformed ``target_prompt_logprobs`` tensor (answered 400).
    """
    prompt = _prompt_tokens(request, model)
    _check_limits(request, model, settings)
    return GenerationPlan(
        model=model,
        prompt=prompt,
        params=request.sampling_params,
        num_samples=request.num_samples,
        prompt_logprobs=bool(request.prompt_logprobs),
        topk_prompt=request.topk_prompt_logprobs,
        topk_sample=request.topk_sample_logprobs,
        prompt_logprobs_last_n=_last_n(request, prompt),
        target=request.target_prompt_logprobs,
        target_rows=_target_rows(request, prompt, model),
        alt_k=request.prompt_alt_tokens_k,
        work_tokens=_work_tokens(request, prompt, model, settings),
    )
