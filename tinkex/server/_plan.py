"""Checking a decoded SampleRequest against a model: a GenerationPlan, or a 400 naming the problem."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

import attrs

from ..types import EncodedTextChunk, SampleRequest, SamplingParams
from ._problems import bad_request
from ._settings import ServerSettings
from .models import LanguageModel

__all__ = ["GenerationPlan", "plan_request"]


@attrs.frozen
class GenerationPlan:
    """Everything a worker needs to generate one request; immutable once checked.

    ``unsupported`` names a requested feature this server lacks: the request is accepted and
    its future fails with category ``user`` (as the hosted service does for what it cannot run).
    """

    model: LanguageModel = attrs.field(eq=False, repr=False)
    prompt: List[int]
    params: SamplingParams
    num_samples: int = 1
    prompt_logprobs: bool = False
    topk_prompt: int = 0
    topk_sample: int = 0
    prompt_logprobs_last_n: Optional[int] = None
    unsupported: Optional[str] = None
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
    if request.prompt_alt_tokens_k < 0:
        raise bad_request(f"prompt_alt_tokens_k={request.prompt_alt_tokens_k} must be >= 0")


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


def _last_n(raw: Mapping[str, Any], wants_prompt_logprobs: bool) -> Optional[int]:
    value = raw.get("prompt_logprobs_last_n")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise bad_request(f"prompt_logprobs_last_n must be an int >= 1, got {value!r}")
    if not wants_prompt_logprobs:
        raise bad_request("prompt_logprobs_last_n requires prompt_logprobs=true")
    return value


def _unsupported(request: SampleRequest, raw: Mapping[str, Any]) -> Optional[str]:
    if request.prompt_alt_tokens_k > 0:
        return "prompt_alt_tokens_k > 0 is not supported by this server"
    if raw.get("target_prompt_logprobs") is not None:
        return "target_prompt_logprobs is not supported by this server"
    return None


def plan_request(
    request: SampleRequest, raw: Mapping[str, Any], model: LanguageModel, settings: ServerSettings
) -> GenerationPlan:
    """Check ``request`` (``raw`` is its decoded JSON, for fields the type does not carry).

    Raises:
        Problem: 400 naming the offending field and value.
    """
    prompt = _prompt_tokens(request, model)
    _check_limits(request, model, settings)
    wants_prompt_logprobs = bool(request.prompt_logprobs)
    return GenerationPlan(
        model=model,
        prompt=prompt,
        params=request.sampling_params,
        num_samples=request.num_samples,
        prompt_logprobs=wants_prompt_logprobs,
        topk_prompt=request.topk_prompt_logprobs,
        topk_sample=request.topk_sample_logprobs,
        prompt_logprobs_last_n=_last_n(raw, wants_prompt_logprobs),
        unsupported=_unsupported(request, raw),
        work_tokens=_work_tokens(request, prompt, model, settings),
    )
