"""Building a SampleRequest from ``sample()``'s arguments, and checking what the answer holds.

The official SDK's extras (``topk_sample_logprobs``, ``target_prompt_logprobs``,
``prompt_alt_tokens_k``, ``prompt_logprobs_last_n``) are checked here on the caller's thread, so
bad input is a :class:`ValidationError` naming the field before anything is sent; a server that
ignored an extra it was asked for is an :class:`APIError` instead of a silently partial answer.

Example:
    >>> from tinkex.types import ModelInput, SamplingParams
    >>> request = build_request(ModelInput.from_ints([1, 2, 3]), SamplingParams(max_tokens=1), 1,
    ...                         Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=2))
    >>> request.prompt_logprobs, request.prompt_logprobs_last_n
    (True, 2)
"""

from __future__ import annotations

from typing import Any, Optional

import attrs

from ..errors import APIError, ValidationError
from ..types import ModelInput, SampleRequest, SampleResponse, SamplingParams, TensorData

__all__ = ["Extras", "build_request", "check_answer"]


@attrs.frozen
class Extras:
    """The optional parts of a sample request, as ``sample()`` takes them (checked by ``build_request``)."""

    include_prompt_logprobs: Any = False
    topk_prompt_logprobs: Any = 0
    topk_sample_logprobs: Any = 0
    target_prompt_logprobs: Any = None
    prompt_alt_tokens_k: Any = 0
    prompt_logprobs_last_n: Any = None
    record_stability_info: bool = False


def _invalid(field: str, value: Any, rule: str) -> ValidationError:
    return ValidationError(f"{field} {rule}, got {value!r}", field=field, value=value)


def _non_negative(field: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid(field, value, "must be a non-negative int")
    return value


def _prompt_length(prompt: ModelInput) -> Optional[int]:
    """The prompt's token count, or None when an image chunk leaves it unknown here."""
    try:
        return prompt.length
    except (AttributeError, TypeError, ValueError):
        return None


def _check_last_n(value: Any, extras: Extras, length: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _invalid("prompt_logprobs_last_n", value, "must be None or an int >= 1")
    if extras.include_prompt_logprobs is not True:
        raise _invalid("prompt_logprobs_last_n", value, "applies to prompt logprobs: set include_prompt_logprobs=True")
    if length is not None and value > length - 1:
        raise _invalid("prompt_logprobs_last_n", value, f"must be at most len(prompt) - 1 = {length - 1}")
    return value


def _check_targets(value: Any, length: Optional[int]) -> Optional[TensorData]:
    if value is None:
        return None
    if not isinstance(value, TensorData):
        raise ValidationError(f"target_prompt_logprobs must be a TensorData, got {type(value).__name__}",
                              field="target_prompt_logprobs", value=type(value).__name__)
    if value.dtype != "int64":
        raise _invalid("target_prompt_logprobs", value.dtype, "must be an int64 tensor of token ids (dtype)")
    if value.shape is None or len(value.shape) != 2:
        raise _invalid("target_prompt_logprobs", value.shape, "must be 2-D, [len(prompt) - 1, K] (shape)")
    value.check("target_prompt_logprobs")
    if length is not None and value.shape[0] != length - 1:
        raise _invalid("target_prompt_logprobs", value.shape, f"needs len(prompt) - 1 = {length - 1} rows (shape)")
    return value


def build_request(prompt: Any, params: Any, num_samples: Any, extras: Extras) -> SampleRequest:
    """The request for ``sample()``'s arguments; raises ``ValidationError`` naming the bad field."""
    if not isinstance(prompt, ModelInput):
        raise ValidationError(f"prompt must be a ModelInput, got {type(prompt).__name__}", field="prompt",
                              value=type(prompt).__name__)
    if not isinstance(params, SamplingParams):
        raise ValidationError(f"sampling_params must be SamplingParams, got {type(params).__name__}",
                              field="sampling_params", value=params)
    if not isinstance(extras.include_prompt_logprobs, bool):
        raise _invalid("include_prompt_logprobs", extras.include_prompt_logprobs, "must be a bool")
    length = _prompt_length(prompt)
    return SampleRequest(
        prompt=prompt, sampling_params=params, num_samples=num_samples,
        prompt_logprobs=extras.include_prompt_logprobs, topk_prompt_logprobs=extras.topk_prompt_logprobs,
        topk_sample_logprobs=_non_negative("topk_sample_logprobs", extras.topk_sample_logprobs),
        prompt_alt_tokens_k=_non_negative("prompt_alt_tokens_k", extras.prompt_alt_tokens_k),
        target_prompt_logprobs=_check_targets(extras.target_prompt_logprobs, length),
        prompt_logprobs_last_n=_check_last_n(extras.prompt_logprobs_last_n, extras, length),
        record_stability_info=extras.record_stability_info,
    )


def check_answer(response: SampleResponse, request: SampleRequest) -> SampleResponse:
    """Raise ``APIError`` when the server ignored an extra it was asked for (it may predate it)."""
    if request.prompt_alt_tokens_k > 0 and response.prompt_alt_tokens is None:
        raise APIError(f"prompt_alt_tokens_k={request.prompt_alt_tokens_k} was requested but the server returned "
                       "no prompt_alt_tokens; it may predate this feature")
    if request.target_prompt_logprobs is not None and response.target_prompt_logprobs is None:
        raise APIError("target_prompt_logprobs was requested but the server returned none; it may predate this "
                       "feature")
    last_n = request.prompt_logprobs_last_n
    logprobs = response.prompt_logprobs
    if last_n is not None and logprobs is not None and any(v is not None for v in logprobs[: len(logprobs) - last_n]):
        raise APIError(f"prompt_logprobs_last_n={last_n} was requested but the server returned prompt logprobs "
                       "before that suffix; it may predate this feature")
    return response
