"""Sampling values: parameters, requests and results, and the wire enums they share."""

from __future__ import annotations

import enum
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import attrs

from ..errors import DecodeError, ValidationError
from ._arrays import TopkArrays, float32_array, int32_array, topk_arrays
from ._model_input import ModelInput
from ._tensor import PromptAltTokens, TensorData
from ._wire import decode_list, evolve, fields_to_json, get_field, int_list, optional_float_list, require_mapping

__all__ = [
    "StopReason",
    "QueueState",
    "RequestErrorCategory",
    "SamplingParams",
    "SampleRequest",
    "SampledSequence",
    "SampleResponse",
    "TopkLogprobs",
]

TopkLogprobs = Optional[List[Tuple[int, float]]]
StopSpec = Union[str, List[str], List[int], None]


class _WireEnum(str, enum.Enum):
    """A string enum that prints as its wire value."""

    def __str__(self) -> str:
        return str(self.value)


class _LenientEnum(_WireEnum):
    """A wire enum that reads any unrecognised value (or a non-string) as ``UNKNOWN``."""

    @classmethod
    def parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        return cls("unknown")


class StopReason(_WireEnum):
    """Why a sequence ended: a stop string/token or EOS (``stop``), or ``max_tokens`` (``length``)."""

    STOP = "stop"
    LENGTH = "length"


class QueueState(_LenientEnum):
    """The server's queue state for a pending request; anything unrecognised is ``UNKNOWN``."""

    ACTIVE = "active"
    PAUSED_RATE_LIMIT = "paused_rate_limit"
    PAUSED_CAPACITY = "paused_capacity"
    UNKNOWN = "unknown"


class RequestErrorCategory(_LenientEnum):
    """Who a failed request is blamed on; only ``USER`` failures are not worth retrying."""

    UNKNOWN = "unknown"
    SERVER = "server"
    USER = "user"


def _invalid(field: str, value: Any, rule: str) -> ValidationError:
    return ValidationError(f"{field} {rule}, got {value!r}", field=field, value=value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_stop(value: Any) -> StopSpec:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        raise _invalid("stop", value, "must be a str, a list of str or a list of int")
    items = list(value)
    if all(isinstance(item, str) for item in items):
        return items
    if all(_is_int(item) for item in items):
        if any(item < 0 for item in items):
            raise _invalid("stop", value, "token ids must be non-negative")
        return items
    raise _invalid("stop", value, "must not mix strings and token ids")


def _validate_params(params: SamplingParams) -> None:
    if params.max_tokens is not None and (not _is_int(params.max_tokens) or params.max_tokens < 0):
        raise _invalid("max_tokens", params.max_tokens, "must be a non-negative int")
    if params.seed is not None and not _is_int(params.seed):
        raise _invalid("seed", params.seed, "must be an int")
    temperature = params.temperature
    if not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise _invalid("temperature", temperature, "must be a finite number >= 0")
    if not _is_int(params.top_k) or params.top_k < -1 or params.top_k == 0:
        raise _invalid("top_k", params.top_k, "must be -1 (no limit) or a positive int")
    top_p = params.top_p
    if not _is_number(top_p) or not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise _invalid("top_p", top_p, "must be in (0, 1]")


@attrs.frozen
class SamplingParams:
    """How to sample. Validated at construction.

    Args:
        max_tokens: the most tokens to generate per sequence (None: the server decides).
        seed: same seed and request give the same tokens.
        stop: a string, a list of strings or a list of token ids; ``[]`` disables EOS too.
        temperature: 0 is greedy.
        top_k: -1 for no limit.
        top_p: nucleus mass in (0, 1].

    Raises:
        ValidationError: naming the field and the value.

    Example:
        >>> SamplingParams(max_tokens=16, temperature=0.7, stop=["\\n"]).to_json()
        {'max_tokens': 16, 'stop': ['\\n'], 'temperature': 0.7, 'top_k': -1, 'top_p': 1.0}
    """

    max_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: StopSpec = attrs.field(default=None, converter=_check_stop)
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0

    def __attrs_post_init__(self) -> None:
        _validate_params(self)

    def to_json(self) -> Dict[str, Any]:
        return fields_to_json(self)

    @classmethod
    def from_json(cls, data: Any) -> SamplingParams:
        mapping = require_mapping(data, "SamplingParams")
        what = "SamplingParams"
        try:
            return cls(
                max_tokens=get_field(mapping, "max_tokens", what, int, None),
                seed=get_field(mapping, "seed", what, int, None),
                stop=get_field(mapping, "stop", what, (str, list), None),
                temperature=get_field(mapping, "temperature", what, float, 1.0),
                top_k=get_field(mapping, "top_k", what, int, -1),
                top_p=get_field(mapping, "top_p", what, float, 1.0),
            )
        except ValidationError as exc:
            raise DecodeError(f"SamplingParams: {exc}") from None


def _check_num_samples(value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise _invalid("num_samples", value, "must be a positive int")
    return int(value)


def _check_non_negative(field: str) -> Callable[[Any, Any, Any], None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not _is_int(value) or value < 0:
            raise _invalid(field, value, "must be a non-negative int")

    return check


@attrs.frozen
class SampleRequest:
    """The body of ``asample`` (and ``stream_sample``); field order is the wire order.

    Example:
        >>> req = SampleRequest(prompt=ModelInput.from_ints([1]), sampling_params=SamplingParams(),
        ...                     sampling_session_id="s:sample:0", seq_id=0)
        >>> req.to_json()["type"]
        'sample'
    """

    prompt: ModelInput
    sampling_params: SamplingParams
    num_samples: int = attrs.field(default=1, converter=_check_num_samples)
    sampling_session_id: Optional[str] = None
    seq_id: Optional[int] = None
    base_model: Optional[str] = None
    model_path: Optional[str] = None
    prompt_logprobs: Optional[bool] = False
    topk_prompt_logprobs: int = attrs.field(default=0, validator=_check_non_negative("topk_prompt_logprobs"))
    topk_sample_logprobs: int = 0
    prompt_alt_tokens_k: int = 0
    record_stability_info: bool = False
    type: str = attrs.field(default="sample", init=False)
    target_prompt_logprobs: Optional[TensorData] = None
    prompt_logprobs_last_n: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "num_samples": self.num_samples,
            "prompt": self.prompt.to_json(),
            "sampling_params": self.sampling_params.to_json(),
        }
        for name in ("sampling_session_id", "seq_id", "base_model", "model_path", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["topk_prompt_logprobs"] = self.topk_prompt_logprobs
        out["topk_sample_logprobs"] = self.topk_sample_logprobs
        if self.target_prompt_logprobs is not None:
            out["target_prompt_logprobs"] = self.target_prompt_logprobs.to_json()
        out["prompt_alt_tokens_k"] = self.prompt_alt_tokens_k
        if self.prompt_logprobs_last_n is not None:
            out["prompt_logprobs_last_n"] = self.prompt_logprobs_last_n
        out["record_stability_info"] = self.record_stability_info
        out["type"] = "sample"
        return out

    @classmethod
    def from_json(cls, data: Any) -> SampleRequest:
        """Decode a request body (the server's side); raises ``DecodeError`` naming the field."""
        mapping = require_mapping(data, "SampleRequest")
        what = "SampleRequest"
        try:
            return cls(
                prompt=ModelInput.from_json(get_field(mapping, "prompt", what)),
                sampling_params=SamplingParams.from_json(get_field(mapping, "sampling_params", what)),
                num_samples=get_field(mapping, "num_samples", what, int, 1),
                sampling_session_id=get_field(mapping, "sampling_session_id", what, str, None),
                seq_id=get_field(mapping, "seq_id", what, int, None),
                base_model=get_field(mapping, "base_model", what, str, None),
                model_path=get_field(mapping, "model_path", what, str, None),
                prompt_logprobs=get_field(mapping, "prompt_logprobs", what, bool, False),
                topk_prompt_logprobs=get_field(mapping, "topk_prompt_logprobs", what, int, 0),
                topk_sample_logprobs=get_field(mapping, "topk_sample_logprobs", what, int, 0),
                prompt_alt_tokens_k=get_field(mapping, "prompt_alt_tokens_k", what, int, 0),
                record_stability_info=get_field(mapping, "record_stability_info", what, bool, False),
                target_prompt_logprobs=get_field(
                    mapping, "target_prompt_logprobs", what, dict, None, TensorData.from_json
                ),
                prompt_logprobs_last_n=get_field(mapping, "prompt_logprobs_last_n", what, int, None),
            )
        except ValidationError as exc:
            raise DecodeError(f"SampleRequest: {exc}") from None


def _decode_stop_reason(value: Any) -> StopReason:
    try:
        return StopReason(value)
    except ValueError:
        raise DecodeError(f"SampledSequence: unknown stop_reason {value!r}") from None


def _decode_topk_entry(entry: Any) -> Tuple[int, float]:
    if isinstance(entry, dict):
        entry = (entry.get("token_id"), entry.get("logprob"))
    if (
        not isinstance(entry, (list, tuple))
        or len(entry) != 2
        or not _is_int(entry[0])
        or not _is_number(entry[1])
    ):
        raise DecodeError(f"Invalid topk logprob entry: {entry!r}")
    return (entry[0], float(entry[1]))


def decode_topk_rows(value: Any, what: str) -> List[TopkLogprobs]:
    """Decode top-k rows: each None or a list of ``(token_id, logprob)`` pairs."""
    return decode_list(
        value, what, lambda row: None if row is None else decode_list(row, what, _decode_topk_entry)
    )


def _topk_rows_json(rows: List[TopkLogprobs]) -> List[Optional[List[List[Any]]]]:
    return [None if row is None else [list(entry) for entry in row] for row in rows]


def _sequence_topk(rows: Any) -> List[TopkLogprobs]:
    return decode_topk_rows(rows, "SampledSequence.topk_logprobs")


def _tokenizer(tokenizer: Any) -> Any:
    if isinstance(tokenizer, str):
        from ..tokenizers import get_tokenizer

        return get_tokenizer(tokenizer)
    return tokenizer


@attrs.frozen
class SampledSequence:
    """One generated sequence.

    Example:
        >>> SampledSequence(tokens=[5, 6], logprobs=[-0.5, -1.0], stop_reason=StopReason.LENGTH).stop_reason
        <StopReason.LENGTH: 'length'>
    """

    tokens: List[int]
    logprobs: Optional[List[float]] = None
    stop_reason: StopReason = StopReason.STOP
    sequence_id: Optional[str] = None
    topk_logprobs: Optional[List[TopkLogprobs]] = None

    def decode(self, tokenizer: Any) -> str:
        """The text of ``tokens``, special tokens skipped.

        Args:
            tokenizer: a tokenizer (e.g. ``client.get_tokenizer()``) or a model name to look one up.

        Example:
            >>> SampledSequence(tokens=[104, 105, 257]).decode("tinkex/byte")
            'hi'
        """
        return str(_tokenizer(tokenizer).decode(self.tokens))

    @property
    def tokens_np(self) -> Any:
        """``tokens`` as a 1-D int32 numpy array (needs numpy)."""
        return int32_array(self.tokens)

    @property
    def logprobs_np(self) -> Any:
        """``logprobs`` as a 1-D float32 numpy array, or None (needs numpy)."""
        return None if self.logprobs is None else float32_array(self.logprobs)

    @property
    def topk_logprobs_np(self) -> Optional[TopkArrays]:
        """``topk_logprobs`` as two ``(num_tokens, k)`` matrices, or None (needs numpy)."""
        return None if self.topk_logprobs is None else topk_arrays(self.topk_logprobs)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"stop_reason": self.stop_reason.value, "tokens": self.tokens}
        out["logprobs"] = self.logprobs
        if self.sequence_id is not None:
            out["sequence_id"] = self.sequence_id
        if self.topk_logprobs is not None:
            out["topk_logprobs"] = _topk_rows_json(self.topk_logprobs)
        return out

    @classmethod
    def from_json(cls, data: Any) -> SampledSequence:
        mapping = require_mapping(data, "SampledSequence")
        what = "SampledSequence"
        logprobs = get_field(mapping, "logprobs", what, list, None)
        return cls(
            tokens=int_list(get_field(mapping, "tokens", what, list), "SampledSequence.tokens"),
            logprobs=None if logprobs is None else optional_float_list(logprobs, "SampledSequence.logprobs"),
            stop_reason=get_field(mapping, "stop_reason", what, str, StopReason.STOP, _decode_stop_reason),
            sequence_id=get_field(mapping, "sequence_id", what, str, None),
            topk_logprobs=get_field(mapping, "topk_logprobs", what, list, None, _sequence_topk),
        )


@attrs.frozen
class SampleResponse:
    """The result of a sample (or compute_logprobs) request.

    Example:
        >>> SampleResponse(sequences=[SampledSequence(tokens=[1])]).prompt_cache_hit_tokens
        0
    """

    sequences: List[SampledSequence]
    prompt_logprobs: Optional[List[Optional[float]]] = None
    topk_prompt_logprobs: Optional[List[TopkLogprobs]] = None
    prompt_cache_hit_tokens: int = 0
    type: str = attrs.field(default="sample", init=False)
    target_prompt_logprobs: Optional[TensorData] = None
    prompt_alt_tokens: Optional[PromptAltTokens] = None

    def to_json(self) -> Dict[str, Any]:
        """The legacy JSON result form (protocol 6.4), plus the 0.38 fields when present."""
        topk = self.topk_prompt_logprobs
        out: Dict[str, Any] = {
            "type": "sample",
            "sequences": [seq.to_json() for seq in self.sequences],
            "prompt_logprobs": self.prompt_logprobs,
            "topk_prompt_logprobs": None if topk is None else _topk_rows_json(topk),
            "prompt_cache_hit_tokens": self.prompt_cache_hit_tokens,
        }
        if self.target_prompt_logprobs is not None:
            out["target_prompt_logprobs"] = self.target_prompt_logprobs.to_json()
        if self.prompt_alt_tokens is not None:
            out["prompt_alt_tokens"] = self.prompt_alt_tokens.to_json()
        return out

    @classmethod
    def from_json(cls, data: Any) -> SampleResponse:
        mapping = require_mapping(data, "SampleResponse")
        what = "SampleResponse"
        prompt_logprobs = get_field(mapping, "prompt_logprobs", what, list, None)
        topk = get_field(mapping, "topk_prompt_logprobs", what, list, None)
        return cls(
            sequences=decode_list(get_field(mapping, "sequences", what, list), what, SampledSequence.from_json),
            prompt_logprobs=None if prompt_logprobs is None else optional_float_list(prompt_logprobs, what),
            topk_prompt_logprobs=None if topk is None else decode_topk_rows(topk, what),
            prompt_cache_hit_tokens=get_field(mapping, "prompt_cache_hit_tokens", what, int, 0),
            target_prompt_logprobs=get_field(mapping, "target_prompt_logprobs", what, dict, None, TensorData.from_json),
            prompt_alt_tokens=get_field(mapping, "prompt_alt_tokens", what, dict, None, PromptAltTokens.from_json),
        )

    @property
    def prompt_logprobs_np(self) -> Any:
        """``prompt_logprobs`` as a 1-D float32 numpy array (NaN where None), or None (needs numpy)."""
        return None if self.prompt_logprobs is None else float32_array(self.prompt_logprobs)

    @property
    def topk_prompt_logprobs_np(self) -> Optional[TopkArrays]:
        """``topk_prompt_logprobs`` as two ``(prompt_length, k)`` matrices, or None (needs numpy)."""
        return None if self.topk_prompt_logprobs is None else topk_arrays(self.topk_prompt_logprobs)

    def texts(self, tokenizer: Any) -> List[str]:
        """The decoded text of every sequence, in order (see :meth:`SampledSequence.decode`).

        Example:
            >>> SampleResponse(sequences=[SampledSequence(tokens=[111, 107])]).texts("tinkex/byte")
            ['ok']
        """
        decoder = _tokenizer(tokenizer)
        return [decoder.decode(seq.tokens) for seq in self.sequences]

    def with_sequence_ids(self, sequence_ids: Sequence[str]) -> SampleResponse:
        """Return a copy whose sequences carry the promise's ``sample_sequence_ids`` in order."""
        if not sequence_ids:
            return self
        ids = list(sequence_ids)
        sequences = [
            evolve(seq, sequence_id=ids[i]) if i < len(ids) else seq for i, seq in enumerate(self.sequences)
        ]
        return evolve(self, sequences=sequences)
