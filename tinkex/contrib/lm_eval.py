"""An lm-evaluation-harness backend: standard benchmarks on any Tinker model, through tinkex futures.

Importing this module registers :class:`TinkexLM` with lm-eval under the model name ``tinkex``
(newer lm-eval releases also find it through the ``lm_eval.models`` entry point, so
``lm_eval run --model tinkex`` works there without the import). Installed with the ``lm-eval``
extra: ``pip install 'tinkex[lm-eval]'``.

Every request of an lm-eval call is submitted as a future, at most ``max_in_flight`` at once,
and the results come back in request order. What each request type costs in Tinker calls:

* ``loglikelihood``: one scoring call (``compute_logprobs``-style prompt logprobs, top-1 included
  for ``is_greedy``) of context + continuation.
* ``loglikelihood_rolling``: one scoring call per window; a document longer than the model's
  context is cut into lm-eval's rolling windows.
* ``generate_until``: one ``sample`` call.

A request that still fails after the SDK's retries does not stop the run: it is logged with
its index, kept in :attr:`TinkexLM.failures` and scored as ``-inf`` / ``""``; with
``on_error=raise`` the call raises :class:`EvalRequestError` once the others have finished.

Example:
    >>> import lm_eval
    >>> import tinkex.contrib.lm_eval  # registers "tinkex"  # doctest: +SKIP
    >>> lm_eval.simple_evaluate(model="tinkex", tasks=["tinkex_python_mc"],
    ...     model_args="base_model=tinkex/ngram-small,base_url=http://127.0.0.1:8000")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import attrs
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from .. import ServiceClient, types
from ..errors import DecodeError, TinkexError, ValidationError
from ..tokenizers import HuggingFaceTokenizer, Tokenizer, get_tokenizer
from ._inflight import run_in_flight

__all__ = ["TinkexLM", "EvalRequestError", "RequestFailure", "close_all"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_IN_FLIGHT = 64
DEFAULT_MAX_LENGTH = 2048
DEFAULT_MAX_GEN_TOKS = 256
ON_ERROR_CHOICES = ("report", "raise")
# The request compute_logprobs sends, with the top-1 alternatives that is_greedy needs.
_SCORE_PARAMS = types.SamplingParams(max_tokens=1, temperature=1.0, top_k=-1, top_p=1.0)
_GEN_KEYS = {"until", "max_gen_toks", "temperature", "do_sample", "top_p", "top_k", "seed"}
# Strong references: lm-eval drops the model it built before returning, and close_all must still end
# its session (a weak set would have forgotten it while its heartbeat kept the session alive).
_OPEN: Set[TinkexLM] = set()
_OPEN_LOCK = threading.Lock()  # guards _OPEN, which models created on any thread join


@attrs.frozen
class RequestFailure:
    """One request that failed after the SDK's retries.

    Attributes:
        kind: ``loglikelihood``, ``loglikelihood_rolling`` or ``generate_until``.
        index: the request's position in the list lm-eval passed.
        error: what it failed with.
    """

    kind: str
    index: int
    error: BaseException = attrs.field(eq=False)


class EvalRequestError(TinkexError):
    """Requests of one lm-eval call failed (raised with ``on_error=raise``, after the rest finished).

    Attributes:
        failures: the failed requests, by index.

    Example:
        >>> err = EvalRequestError([RequestFailure("generate_until", 3, TinkexError("boom"))])
        >>> err.failures[0].index, str(err)
        (3, '1 generate_until request(s) failed: #3: boom')
    """

    def __init__(self, failures: Sequence[RequestFailure]) -> None:
        shown = "; ".join(f"#{f.index}: {f.error}" for f in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} {failures[0].kind} request(s) failed: {shown}{more}")
        self.failures = tuple(failures)


def _invalid(field: str, value: Any, rule: str) -> ValidationError:
    return ValidationError(f"model_args {field} {rule}, got {value!r}", field=field, value=value)


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(field, value, "must be a positive int")
    return value


def _optional_positive(field: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise _invalid(field, value, "must be a positive number")
    return float(value)


def _optional_int(field: str, value: Any) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise _invalid(field, value, "must be an int")
    return value


def _fit(context: List[int], continuation: List[int], max_length: int) -> Tuple[List[int], int]:
    """The prompt to score and how many of its last tokens to sum, cut from the left to ``max_length``."""
    tokens = context + continuation
    if len(tokens) <= max_length:
        return tokens, len(continuation)
    return tokens[-max_length:], min(len(continuation), max_length - 1)


def _is_top(row: Optional[List[Tuple[int, float]]], token: int, logprob: float) -> bool:
    """Whether ``token`` is the greedy choice at this position (a tie counts)."""
    if not row:
        return False
    top_token, top_logprob = row[0]
    return top_token == token or logprob >= top_logprob


def continuation_score(response: types.SampleResponse, tokens: List[int], scored: int) -> Tuple[float, bool]:
    """``(sum of the last scored prompt logprobs, whether each of those tokens was the top-1)``.

    Raises:
        DecodeError: the answer lacks the logprobs it was asked for.
    """
    logprobs = response.prompt_logprobs or []
    topk = response.topk_prompt_logprobs or []
    if len(logprobs) != len(tokens):
        raise DecodeError(f"expected {len(tokens)} prompt logprobs, got {len(logprobs)}")
    total, greedy = 0.0, True
    for position in range(len(tokens) - scored, len(tokens)):
        logprob = logprobs[position]
        if logprob is None:
            raise DecodeError(f"no prompt logprob at position {position}")
        total += logprob
        greedy = greedy and _is_top(topk[position] if position < len(topk) else None, tokens[position], logprob)
    return total, greedy


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string, as lm-eval expects.

    Example:
        >>> cut_at_stop("a = 1\\n\\nb = 2", ["\\n\\n", "#"])
        'a = 1'
    """
    ends = [text.find(stop) for stop in until if stop]
    found = [end for end in ends if end >= 0]
    return text[: min(found)] if found else text


@register_model("tinkex")
class TinkexLM(TemplateLM):  # type: ignore[misc, unused-ignore]  # lm_eval is untyped: the base is Any (an error only under --strict)
    """lm-eval's model interface over a tinkex :class:`~tinkex.SamplingClient`.

    ``model_args`` (all optional but one of ``base_model`` / ``model_path``):
    ``base_model``, ``model_path``, ``base_url`` and ``api_key`` (else ``TINKER_BASE_URL`` /
    ``TINKER_API_KEY``), ``tokenizer`` (a name or ``tokenizer.json`` path for
    :func:`tinkex.tokenizers.get_tokenizer`; default the model's), ``max_in_flight`` (64),
    ``timeout`` (seconds per request, polling included), ``seed`` (for ``generate_until``),
    ``max_length`` (default the server's context length for the model), ``max_gen_toks``
    (256), ``on_error`` (``report`` or ``raise``) and ``local`` (start a
    :class:`~tinkex.server.LocalServer` with ``base_model`` for this run).
    lm-eval's ``batch_size`` / ``device`` are accepted and ignored: ``max_in_flight`` is the batch.

    Thread-safety: lm-eval calls it from one thread; the requests it sends run on the
    client's pool, and their results are collected back on the calling thread.

    Example:
        >>> lm = TinkexLM(base_model="tinkex/ngram-small", local=True)  # doctest: +SKIP
        >>> lm.loglikelihood([Instance("loglikelihood", {}, ("import", " os"), 0)])  # doctest: +SKIP
        [(-12.9, False)]
        >>> lm.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        base_model: Optional[str] = None,
        model_path: Optional[str] = None,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        tokenizer: Optional[str] = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        timeout: Optional[float] = None,
        seed: Optional[int] = None,
        max_length: Optional[int] = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        on_error: str = "report",
        local: bool = False,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(name, unknown[name], "is not an argument of the tinkex model")
        self._max_in_flight = _positive_int("max_in_flight", max_in_flight)
        self._timeout = _optional_positive("timeout", timeout)
        self._seed = _optional_int("seed", seed)
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        if on_error not in ON_ERROR_CHOICES:
            raise _invalid("on_error", on_error, f"must be one of {', '.join(ON_ERROR_CHOICES)}")
        self._on_error = on_error
        self.failures: List[RequestFailure] = []
        self._closed = False
        self._server: Any = None
        self._service: Optional[ServiceClient] = None
        try:
            self._connect(base_model, model_path, base_url, api_key, local)
            self._tokenizer = get_tokenizer(tokenizer) if tokenizer else self._client.get_tokenizer()
            self._check_special_tokens()
            self._max_length = self._context_length(max_length)
        except BaseException:
            self.close()
            raise
        with _OPEN_LOCK:
            _OPEN.add(self)

    # -- set-up --------------------------------------------------------------------------------

    def _connect(self, base_model: Optional[str], model_path: Optional[str], base_url: Optional[str],
                 api_key: Optional[str], local: bool) -> None:
        if local:
            if not base_model:
                raise _invalid("base_model", base_model, "is needed with local=True (the model to serve)")
            from ..server import LocalServer

            self._server = LocalServer(models=[base_model]).start()
            base_url, api_key = self._server.base_url, self._server.api_key
        self._service = ServiceClient(api_key=api_key, base_url=base_url)
        self._client = self._service.create_sampling_client(
            model_path=model_path, base_model=base_model, max_workers=self._max_in_flight
        )

    def _check_special_tokens(self) -> None:
        if self._tokenizer.eos_token_id is None and self._tokenizer.bos_token_id is None:
            raise ValidationError(
                f"tokenizer {self._tokenizer.name!r} has neither a BOS nor an EOS id to condition an empty "
                "context on; pass model_args tokenizer=PATH to one that has", field="tokenizer",
                value=self._tokenizer.name,
            )

    def _context_length(self, max_length: Any) -> int:
        if max_length is not None:
            return _positive_int("max_length", max_length)
        model = self._client.get_base_model()
        assert self._service is not None
        try:
            offered = self._service.get_server_capabilities().supported_models
        except TinkexError as exc:
            logger.warning("cannot read the context length of %s (%s); using %d", model, exc, DEFAULT_MAX_LENGTH)
            return DEFAULT_MAX_LENGTH
        lengths = [m.max_context_length for m in offered if m.model_name == model and m.max_context_length]
        if not lengths:
            logger.info("the server does not say the context length of %s; using %d", model, DEFAULT_MAX_LENGTH)
        return lengths[0] if lengths else DEFAULT_MAX_LENGTH

    # -- what TemplateLM needs -----------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        eos = self._tokenizer.eos_token_id
        return eos if eos is not None else self.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self._tokenizer.bos_token_id
        return bos if bos is not None else int(self._tokenizer.eos_token_id)  # type: ignore[arg-type]

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self._tokenizer.name

    @property
    def tinkex_tokenizer(self) -> Tokenizer:
        """The tokenizer requests are encoded with."""
        return self._tokenizer

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> List[int]:
        """The ids of ``string``; ``add_special_tokens`` reaches Hugging Face tokenizers (the byte one adds none)."""
        if add_special_tokens is not None and isinstance(self._tokenizer, HuggingFaceTokenizer):
            return self._tokenizer.encode(string, add_special_tokens=add_special_tokens)
        return self._tokenizer.encode(string)

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self._tokenizer.decode(tokens)

    # -- the three request types ---------------------------------------------------------------

    def _loglikelihood_tokens(self, requests: List[Any], disable_tqdm: bool = False, **kwargs: Any
                              ) -> List[Tuple[float, bool]]:
        pairs = [(context, continuation) for _key, context, continuation in requests]
        scores, failures = self._score_pairs(pairs, "tinkex loglikelihood", disable_tqdm)
        self._report("loglikelihood", failures)
        results: List[Tuple[float, bool]] = []
        for (key, _context, _continuation), score in zip(requests, scores):
            if score is not None and key is not None:
                self.cache_hook.add_partial("loglikelihood", key, score)
            results.append(score if score is not None else (-math.inf, False))
        return results

    def loglikelihood_rolling(self, requests: List[Any], disable_tqdm: bool = False) -> List[float]:
        strings = [request.args[0] for request in requests]
        documents = [self._windows(string) for string in strings]
        flat = [window for windows in documents for window in windows]
        owner = [doc for doc, windows in enumerate(documents) for _ in windows]
        scores, failures = self._score_pairs(flat, "tinkex loglikelihood_rolling", disable_tqdm)
        self._report("loglikelihood_rolling", {owner[index]: error for index, error in failures.items()})
        totals = [0.0] * len(documents)
        for index, score in enumerate(scores):
            totals[owner[index]] += score[0] if score is not None else -math.inf
        for doc, string in enumerate(strings):
            if math.isfinite(totals[doc]):
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), totals[doc])
        return totals

    def generate_until(self, requests: List[Any], disable_tqdm: bool = False) -> List[str]:
        args = [request.args for request in requests]
        calls = [self._generation(context, gen_kwargs) for context, gen_kwargs, *_rest in args]
        starts = [functools.partial(self._client.sample, prompt, 1, params, timeout=self._timeout)
                  for prompt, params, _until in calls]

        def finish(index: int, response: types.SampleResponse) -> str:
            text = self._tokenizer.decode(response.sequences[0].tokens)
            return cut_at_stop(text, calls[index][2])

        texts, failures = self._gather(starts, finish, "tinkex generate_until", disable_tqdm)
        self._report("generate_until", failures)
        for (context, gen_kwargs, *_rest), text in zip(args, texts):
            if text is not None:
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return [text if text is not None else "" for text in texts]

    # -- building and sending requests ---------------------------------------------------------

    def _windows(self, string: str) -> List[Tuple[List[int], List[int]]]:
        """lm-eval's disjoint rolling windows; each window's context + prediction fits ``max_length``."""
        tokens = self.tok_encode(string, add_special_tokens=False)
        windows = get_rolling_token_windows(tokens, self.prefix_token_id, self._max_length - 1, 1)
        return [make_disjoint_window(window) for window in windows]

    def _score_pairs(self, pairs: Sequence[Tuple[List[int], List[int]]], desc: str, disable_tqdm: bool
                     ) -> Tuple[List[Optional[Tuple[float, bool]]], Dict[int, BaseException]]:
        fitted = [_fit(context, continuation, self._max_length) for context, continuation in pairs]
        starts = [functools.partial(self._score, tokens) for tokens, _scored in fitted]

        def finish(index: int, response: types.SampleResponse) -> Tuple[float, bool]:
            tokens, scored = fitted[index]
            return continuation_score(response, tokens, scored)

        return self._gather(starts, finish, desc, disable_tqdm)

    def _score(self, tokens: List[int]) -> Future[types.SampleResponse]:
        prompt = types.ModelInput.from_ints(tokens)
        return self._client.sample(prompt, 1, _SCORE_PARAMS, include_prompt_logprobs=True, topk_prompt_logprobs=1,
                                   timeout=self._timeout)

    def _generation(self, context: str, gen_kwargs: Dict[str, Any]
                    ) -> Tuple[types.ModelInput, types.SamplingParams, List[str]]:
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), default_max_gen_toks=self._max_gen_toks)
        ignored = sorted(set(kwargs) - _GEN_KEYS)
        if ignored:
            logger.warning("generation kwargs %s have no Tinker equivalent and are ignored", ignored)
        until = [stop for stop in kwargs["until"] if isinstance(stop, str) and stop]
        max_tokens = _positive_int("max_gen_toks", kwargs["max_gen_toks"])
        room = self._max_length - max_tokens
        if room < 1:
            raise _invalid("max_gen_toks", max_tokens, f"must leave room for a prompt in max_length {self._max_length}")
        top_k = kwargs.get("top_k")
        params = types.SamplingParams(
            max_tokens=max_tokens, seed=kwargs.get("seed", self._seed), stop=until or None,
            temperature=float(kwargs.get("temperature") or 0.0), top_p=float(kwargs.get("top_p") or 1.0),
            top_k=-1 if not top_k else int(top_k),
        )
        tokens = self.tok_encode(context)[-room:] or [self.prefix_token_id]
        return types.ModelInput.from_ints(tokens), params, until

    def _gather(self, starts: Sequence[Callable[[], Any]], finish: Callable[[int, Any], Any], desc: str,
                disable_tqdm: bool) -> Tuple[List[Any], Dict[int, BaseException]]:
        with tqdm(total=len(starts), desc=desc, disable=disable_tqdm) as bar:
            return run_in_flight(starts, self._max_in_flight, finish, lambda: bar.update(1))

    def _report(self, kind: str, failures: Dict[int, BaseException]) -> None:
        found = [RequestFailure(kind, index, failures[index]) for index in sorted(failures)]
        for failure in found:
            logger.error("lm-eval %s request #%d failed: %s", kind, failure.index, failure.error)
        self.failures.extend(found)
        if found and self._on_error == "raise":
            raise EvalRequestError(found)
        if found:
            logger.warning("%d %s request(s) failed and were scored as failures; see TinkexLM.failures",
                           len(found), kind)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the client and session (and stop a ``local`` server); idempotent."""
        if self._closed:
            return
        self._closed = True
        with _OPEN_LOCK:
            _OPEN.discard(self)
        if self._service is not None:
            self._service.close()
        if self._server is not None:
            self._server.stop()

    def __enter__(self) -> TinkexLM:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def close_all() -> None:
    """Close every :class:`TinkexLM` still open (``tinkex eval`` calls this when lm-eval returns)."""
    with _OPEN_LOCK:
        models = list(_OPEN)
        _OPEN.clear()
    for model in models:
        model.close()

