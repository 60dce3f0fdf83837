"""The echo model: prompt bytes played back, for measuring client and server overhead.

Token ``i`` of sample ``s`` is ``(source[i % len(source)] + shift) % 256`` where ``source`` is
the prompt (``b"echo"`` when empty) and ``shift = (seed or 0) + s``. Its distribution is
uniform over the vocabulary, so every logprob is ``float32(-log 258)`` in sampling and scoring
alike.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Callable, List, Optional, Sequence, Tuple

from ...types import SamplingParams
from .base import (
    Generation,
    LanguageModel,
    StopMatcher,
    TopkRow,
    check_prompt,
    check_token_ids,
    check_topk,
)

__all__ = ["EchoModel", "ECHO_MODEL"]

ECHO_MODEL = "tinkex/echo"

# Rounded through float32 like every logprob the models report.
_UNIFORM_LOGPROB = struct.unpack("<f", struct.pack("<f", -math.log(258)))[0]
_EMPTY_SOURCE = list(b"echo")


class _EchoGeneration(Generation):
    def __init__(self, source: List[int], shift: int, limit: int, stop: StopMatcher) -> None:
        super().__init__(limit, stop)
        self._source = source
        self._shift = shift

    def _next_token(self) -> Tuple[int, float]:
        source = self._source
        token = (source[len(self.tokens) % len(source)] + self._shift) % 256
        return token, _UNIFORM_LOGPROB


class EchoModel(LanguageModel):
    """Plays the prompt back; costs microseconds per request. Safe to share between threads.

    Example:
        >>> EchoModel().sample([1, 2], SamplingParams(max_tokens=3, seed=1), 1)[0].tokens
        [2, 3, 2]
    """

    name = ECHO_MODEL
    is_cheap = True
    default_max_tokens = 16

    def start(self, prompt: Sequence[int], params: SamplingParams, sample_index: int = 0) -> Generation:
        source = check_prompt(prompt, self.vocab_size, self.max_context_length) or _EMPTY_SOURCE
        limit = self.generation_limit(len(source), params)
        shift = ((params.seed or 0) + sample_index) % 256
        return _EchoGeneration(source, shift, limit, StopMatcher(params, self.eos_token_id))

    def prompt_logprobs(self, prompt: Sequence[int]) -> List[Optional[float]]:
        tokens = check_prompt(prompt, self.vocab_size, self.max_context_length)
        return [None] + [_UNIFORM_LOGPROB] * (len(tokens) - 1) if tokens else []

    def prompt_token_logprobs(self, prompt: Sequence[int], token_rows: Sequence[Sequence[int]]) -> List[List[float]]:
        check_prompt(prompt, self.vocab_size, self.max_context_length)
        check_token_ids(token_rows, self.vocab_size)
        return [[0.0 if t == -1 else _UNIFORM_LOGPROB for t in row] for row in token_rows[: max(0, len(prompt) - 1)]]

    def prompt_alternatives(
        self, prompt: Sequence[int], k: int, params: SamplingParams
    ) -> Tuple[List[List[int]], List[List[float]]]:
        tokens = check_prompt(prompt, self.vocab_size, self.max_context_length)
        rng = random.Random(params.seed)  # uniform at any temperature; greedy takes the first id
        rows = max(0, len(tokens) - 1)
        draw: Callable[[], int] = (lambda: 0) if params.temperature == 0 else (lambda: rng.randrange(self.vocab_size))
        return [[draw() for _ in range(k)] for _ in range(rows)], [[_UNIFORM_LOGPROB] * k for _ in range(rows)]

    def topk_prompt_logprobs(self, prompt: Sequence[int], k: int) -> List[TopkRow]:
        tokens = check_prompt(prompt, self.vocab_size, self.max_context_length)
        row = [(token, _UNIFORM_LOGPROB) for token in range(check_topk(k, self.vocab_size))]
        return [None] + [list(row) for _ in tokens[1:]] if tokens else []

