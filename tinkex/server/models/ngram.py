"""The byte n-gram model: interpolated Kneser-Ney over the ``tinkex/byte`` vocabulary.

Order 6: the next token is predicted from up to five previous ones. Training counts every
n-gram of the corpus (documents framed as ``BOS doc EOS``) with numpy; the highest order keeps
raw counts, lower orders keep Kneser-Ney continuation counts (how many different tokens
precede the n-gram), except n-grams starting with BOS, which have no left context and keep
raw counts. One absolute discount per order, ``D = n1 / (n1 + 2 n2)``, moves mass to the
next lower order, and the lowest order is mixed with the uniform distribution, so at every
step every id has probability > 0 and the distribution sums to 1.

Distributions are built lazily per context and kept in a bounded cache; sampling is a cumulative
sum and a binary search. Trained tables are cached on disk as ``.npz`` keyed by a hash of the
training stream, ``ORDER`` and ``MODEL_VERSION``, written to a temporary file and renamed into
place so a concurrent reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import struct
import tempfile
import threading
import time
import zipfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..._wire.byte_tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE
from ...errors import ValidationError
from ...types import SamplingParams
from .base import (
    Generation,
    LanguageModel,
    StopMatcher,
    TopkRow,
    check_token_ids,
    check_topk,
)

__all__ = ["NGramModel", "NGRAM_MODEL", "ORDER", "MODEL_VERSION"]

NGRAM_MODEL = "tinkex/ngram-small"

logger = logging.getLogger(__name__)

ORDER = 6
MODEL_VERSION = 1
_CONTEXT = ORDER - 1
_BASE = 512  # each token id takes 9 bits of a packed n-gram key; 6 x 9 bits fit an int64
_DISCOUNT_RANGE = (0.05, 0.95)
_CACHE_ENTRIES = 16384
_F32 = struct.Struct("<f")
_ALTERNATIVES_STREAM = 2**32  # the random stream of prompt_alt_tokens draws: never a sample index

Grams = List[Tuple[np.ndarray, np.ndarray]]  # per n-gram length: (sorted packed keys, counts)
Chooser = Callable[[np.ndarray, np.random.Generator], int]


def _float32(value: float) -> float:
    """Round through float32, the precision logprobs travel in."""
    rounded: float = _F32.unpack(_F32.pack(value))[0]  # struct types its fields as Any
    return rounded


def _pack(tokens: Sequence[int]) -> int:
    key = 0
    for token in tokens:
        key = key * _BASE + token
    return key


# ---------------------------------------------------------------- training


def training_stream(documents: Sequence[bytes]) -> np.ndarray:
    """The token stream the model learns from: ``BOS doc EOS`` for every document."""
    parts: List[np.ndarray] = []
    for document in documents:
        parts.append(np.array([BOS_ID], dtype=np.int64))
        parts.append(np.frombuffer(document, dtype=np.uint8).astype(np.int64))
        parts.append(np.array([EOS_ID], dtype=np.int64))
    return np.concatenate(parts) if parts else np.array([BOS_ID, EOS_ID], dtype=np.int64)


def _windows(stream: np.ndarray, length: int) -> np.ndarray:
    """Packed keys of every ``length``-token window, first token most significant."""
    count = len(stream) - length + 1
    if count <= 0:  # a stream shorter than the window (a corpus of a few bytes): no windows
        return np.zeros(0, dtype=np.int64)
    keys = np.zeros(count, dtype=np.int64)
    for offset in range(length):
        keys = keys * _BASE + stream[offset : offset + count]
    return keys


def _continuation_counts(keys: np.ndarray, raw: np.ndarray, longer: np.ndarray, length: int) -> np.ndarray:
    """How many distinct tokens precede each n-gram; raw counts for n-grams that start with BOS."""
    suffixes, counts = np.unique(longer % (_BASE**length), return_counts=True)
    found, index = _lookup(suffixes, keys)
    continuation = np.where(found, counts[index], 0) if len(counts) else np.zeros_like(raw)
    if length == 1:
        return continuation
    return np.where(keys // (_BASE ** (length - 1)) == BOS_ID, raw, continuation)


def count_ngrams(stream: np.ndarray) -> Grams:
    """The Kneser-Ney counts of every n-gram length 1..ORDER (index = length - 1)."""
    raw = [np.unique(_windows(stream, length), return_counts=True) for length in range(1, ORDER + 1)]
    grams: Grams = []
    for length, (keys, counts) in enumerate(raw, start=1):
        if length < ORDER:
            counts = _continuation_counts(keys, counts, raw[length][0], length)
        kept = counts > 0
        grams.append((keys[kept], counts[kept].astype(np.int32)))
    return grams


# ---------------------------------------------------------------- the tables


class _Level:
    """The interpolation weights of one context length, laid out for lookups.

    For the contexts seen in training (sorted packed keys), ``gamma`` is the mass handed to the
    next lower order; for each (context, token) seen, ``adjusted`` is ``(count - D) / total``.
    """

    def __init__(self, keys: np.ndarray, counts: np.ndarray) -> None:
        contexts = keys // _BASE
        starts = np.flatnonzero(np.diff(contexts, prepend=-1))
        totals = np.add.reduceat(counts.astype(np.float64), starts) if len(keys) else np.zeros(0)
        discount = _discount(counts)
        owner = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(keys))))
        self.gram_keys = keys
        self.next_tokens = (keys % _BASE).astype(np.intp)
        self.context_keys = contexts[starts]
        self.offsets = np.append(starts, len(keys))
        self.gamma = discount * np.diff(np.append(starts, len(keys))) / totals
        self.adjusted = (counts - discount) / totals[owner]

    def find(self, context_key: int) -> int:
        """Index of a context, or -1 when training never saw it."""
        index = int(self.context_keys.searchsorted(context_key))
        if index < len(self.context_keys) and self.context_keys[index] == context_key:
            return index
        return -1


def _discount(counts: np.ndarray) -> float:
    ones = int(np.count_nonzero(counts == 1))
    twos = int(np.count_nonzero(counts == 2))
    estimate = ones / (ones + 2 * twos) if ones + twos else _DISCOUNT_RANGE[1]
    return min(max(estimate, _DISCOUNT_RANGE[0]), _DISCOUNT_RANGE[1])


# ---------------------------------------------------------------- sampling


def _chooser(params: SamplingParams) -> Chooser:
    """A function picking a token from a distribution under ``params``, specialised once per request."""
    temperature, top_k, top_p = params.temperature, params.top_k, params.top_p
    if temperature == 0:
        return lambda p, _rng: int(p.argmax())
    if temperature == 1 and top_k == -1 and top_p >= 1:
        return _draw

    def choose(p: np.ndarray, rng: np.random.Generator) -> int:
        weights = p if temperature == 1 else _tempered(p, temperature)
        order = np.argsort(-weights, kind="stable")
        if 0 < top_k < len(order):
            order = order[:top_k]
        kept = weights[order]
        if top_p < 1:
            cdf = np.cumsum(kept)
            kept = kept[: int(cdf.searchsorted(top_p * cdf[-1])) + 1]
        return int(order[_draw(kept, rng)])

    return choose


def _tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """``p ** (1 / T)`` up to a factor, computed in log space so a small T cannot underflow to all zeros."""
    logp = np.log(p)
    tempered: np.ndarray = np.exp((logp - logp.max()) / temperature)  # numpy types ufuncs of an untyped array as Any
    return tempered


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """Sample an index with probability proportional to ``weights`` (zero weights never drawn)."""
    cdf = np.cumsum(weights)
    index = int(cdf.searchsorted(rng.random() * cdf[-1], side="right"))
    if index < len(cdf):
        return index
    return int(np.flatnonzero(weights)[-1])  # the draw rounded up to the total


def _generator(seed: Optional[int], sample_index: int) -> np.random.Generator:
    if seed is None:
        return np.random.default_rng()
    return np.random.default_rng([seed % 2**64, sample_index])


class _NGramGeneration(Generation):
    def __init__(
        self, model: NGramModel, history: List[int], chooser: Chooser, rng: np.random.Generator, limit: int,
        stop: StopMatcher,
    ) -> None:
        super().__init__(limit, stop)
        self._distribution = model.distribution
        self._history = history
        self._choose = chooser
        self._rng = rng

    def _next_token(self) -> Tuple[int, float]:
        history = self._history
        p = self._distribution(tuple(history[-_CONTEXT:]))
        token = self._choose(p, self._rng)
        history.append(token)
        return token, _float32(math.log(p[token]))


# ---------------------------------------------------------------- the model


class NGramModel(LanguageModel):
    """A byte-level order-6 Kneser-Ney language model.

    Safe to share between threads: the tables are read-only and the distribution cache is
    guarded by a lock (a Generation is for one consumer).

    Example:
        >>> model = NGramModel.from_documents([b"the cat sat on the mat. " * 20])
        >>> greedy = SamplingParams(max_tokens=8, temperature=0)
        >>> bytes(model.sample(list(b"the c"), greedy, 1)[0].tokens)
        b'at sat o'
    """

    name = NGRAM_MODEL

    def __init__(self, grams: Grams, *, cache_path: Optional[str] = None, from_cache: bool = False) -> None:
        self.grams = grams
        self.cache_path = cache_path
        self.from_cache = from_cache
        self._levels = [_Level(keys, counts) for keys, counts in grams]
        self._base = self._base_distribution(self._levels[0])
        self._cache: Dict[Tuple[int, ...], np.ndarray] = {}
        self._cache_lock = threading.Lock()

    @classmethod
    def from_documents(cls, documents: Sequence[bytes]) -> NGramModel:
        """Train on ``documents`` without touching the disk cache."""
        return cls(count_ngrams(training_stream(documents)))

    @classmethod
    def load(cls, *, corpus_path: Optional[str] = None, cache_dir: Optional[str] = None) -> NGramModel:
        """Load from the disk cache, or train (and cache) when no usable copy is there.

        Raises:
            ValidationError: ``corpus_path`` cannot be read.
        """
        stream = training_stream(default_documents() if corpus_path is None else read_corpus(corpus_path))
        path = os.path.join(cache_dir or default_cache_dir(), _cache_name(stream))
        grams = _read_cache(path)
        if grams is not None:
            return cls(grams, cache_path=path, from_cache=True)
        began = time.perf_counter()
        grams = count_ngrams(stream)
        elapsed = time.perf_counter() - began
        logger.info("trained %s on %d tokens in %.2f s", NGRAM_MODEL, len(stream), elapsed)
        _write_cache(path, grams)
        return cls(grams, cache_path=path)

    @staticmethod
    def _base_distribution(unigrams: _Level) -> np.ndarray:
        p = np.full(VOCAB_SIZE, unigrams.gamma[0] / VOCAB_SIZE)
        p[unigrams.next_tokens] += unigrams.adjusted
        p.flags.writeable = False
        return p

    def distribution(self, context: Tuple[int, ...]) -> np.ndarray:
        """p(next | context) over the whole vocabulary (read-only); ``context`` = at most the last 5 ids."""
        p = self._cache.get(context)
        if p is not None:
            return p
        if not context:
            return self._base
        lower = self.distribution(context[1:])
        level = self._levels[len(context)]
        index = level.find(_pack(context))
        if index < 0:
            p = lower
        else:
            start, end = level.offsets[index], level.offsets[index + 1]
            p = lower * level.gamma[index]
            p[level.next_tokens[start:end]] += level.adjusted[start:end]
            p.flags.writeable = False
        self._remember(context, p)
        return p

    def _remember(self, context: Tuple[int, ...], p: np.ndarray) -> None:
        with self._cache_lock:
            if len(self._cache) >= _CACHE_ENTRIES:
                for old in list(itertools.islice(self._cache, _CACHE_ENTRIES // 4)):
                    del self._cache[old]
            self._cache[context] = p

    def start(self, prompt: Sequence[int], params: SamplingParams, sample_index: int = 0) -> Generation:
        history = self.history(prompt)
        limit = self.generation_limit(len(history), params)
        rng = _generator(params.seed, sample_index)
        stop = StopMatcher(params, self.eos_token_id)
        return _NGramGeneration(self, history, _chooser(params), rng, limit, stop)

    def prompt_logprobs(self, prompt: Sequence[int]) -> List[Optional[float]]:
        history = self.history(prompt)
        if not prompt:
            return []
        probabilities = self._next_token_probabilities(np.asarray(history, dtype=np.int64))
        scored = [_float32(math.log(p)) for p in probabilities.tolist()]
        return [None, *scored[len(scored) - len(prompt) + 1 :]]

    def topk_prompt_logprobs(self, prompt: Sequence[int], k: int) -> List[TopkRow]:
        history = self.history(prompt)
        k = check_topk(k, self.vocab_size)
        if not prompt:
            return []
        first = len(history) - len(prompt) + 1
        rows = (self._topk(tuple(history[max(0, j - _CONTEXT) : j]), k) for j in range(first, len(history)))
        return [None, *rows]

    def _prompt_contexts(self, prompt: Sequence[int]) -> List[Tuple[int, ...]]:
        """The context predicting ``prompt[i + 1]``, for each ``i < len(prompt) - 1``."""
        history = self.history(prompt)
        first = len(history) - len(prompt) + 1
        return [tuple(history[max(0, j - _CONTEXT) : j]) for j in range(first, len(history))]

    def prompt_token_logprobs(self, prompt: Sequence[int], token_rows: Sequence[Sequence[int]]) -> List[List[float]]:
        check_token_ids(token_rows, self.vocab_size)
        rows = []
        for context, ids in zip(self._prompt_contexts(prompt), token_rows):
            p = self.distribution(context)
            rows.append([0.0 if t == -1 else _float32(math.log(p[t])) for t in ids])
        return rows

    def prompt_alternatives(
        self, prompt: Sequence[int], k: int, params: SamplingParams
    ) -> Tuple[List[List[int]], List[List[float]]]:
        rng = _generator(params.seed, _ALTERNATIVES_STREAM)
        tokens: List[List[int]] = []
        logprobs: List[List[float]] = []
        for context in self._prompt_contexts(prompt):
            p = self.distribution(context)
            if params.temperature == 0:
                drawn = [int(p.argmax())] * k
            else:
                weights = p if params.temperature == 1 else _tempered(p, params.temperature)
                drawn = rng.choice(len(p), size=k, p=weights / weights.sum()).tolist()
            tokens.append(drawn)
            logprobs.append([_float32(math.log(p[t])) for t in drawn])
        return tokens, logprobs

    def _topk(self, context: Tuple[int, ...], k: int) -> List[Tuple[int, float]]:
        p = self.distribution(context)
        best = np.argsort(-p, kind="stable")[:k].tolist()
        return [(token, _float32(math.log(p[token]))) for token in best]

    def _next_token_probabilities(self, history: np.ndarray) -> np.ndarray:
        """p(history[j] | history[:j]) for j >= 1, with exactly the arithmetic of ``distribution``."""
        targets = history[1:]
        p: np.ndarray = self._base[targets].copy()
        for length in range(1, min(_CONTEXT, len(targets)) + 1):
            level = self._levels[length]
            rows = np.arange(length - 1, len(targets))
            contexts = _windows(history[:-1], length)
            found, index = _lookup(level.context_keys, contexts)
            rows, index = rows[found], index[found]
            gram_found, gram = _lookup(level.gram_keys, contexts[found] * _BASE + targets[rows])
            updated = p[rows] * level.gamma[index]
            updated += np.where(gram_found, level.adjusted[gram], 0.0)
            p[rows] = updated
        return p


def _lookup(sorted_keys: np.ndarray, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each key: whether it is in ``sorted_keys`` and its index there (clipped when absent)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.intp)
    index = np.minimum(sorted_keys.searchsorted(keys), len(sorted_keys) - 1)
    return sorted_keys[index] == keys, index


# ---------------------------------------------------------------- corpus and disk cache


def default_documents() -> List[bytes]:
    """The English text of the Python docs' topics, shipped with every CPython (one document per topic)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; builtins' docstrings are always there
        logger.warning("pydoc_data is missing; training %s on builtins' docstrings", NGRAM_MODEL)
        import builtins

        docs = (obj.__doc__ for obj in vars(builtins).values())
        return [doc.encode("utf-8") for doc in docs if isinstance(doc, str)]
    return [topics[name].encode("utf-8") for name in sorted(topics)]


def read_corpus(path: str) -> List[bytes]:
    """A corpus file's documents: its bytes split at form feeds."""
    try:
        with open(path, "rb") as corpus:
            return corpus.read().split(b"\x0c")
    except OSError as exc:
        message = f"cannot read corpus_path {path!r}: {exc}"
        raise ValidationError(message, field="corpus_path", value=path) from None


def default_cache_dir() -> str:
    """``$TINKEX_CACHE_DIR``, else ``~/.cache/tinkex``."""
    return os.environ.get("TINKEX_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "tinkex")


def _cache_name(stream: np.ndarray) -> str:
    digest = hashlib.sha256(stream.astype("<u2").tobytes()).hexdigest()[:32]
    return f"ngram-o{ORDER}-v{MODEL_VERSION}-{digest}.npz"


def _write_cache(path: str, grams: Grams) -> None:
    """Write atomically (temporary file, then rename); a failure only costs retraining next time."""
    arrays: Dict[str, Any] = {"version": np.array([MODEL_VERSION, ORDER])}
    for length, (keys, counts) in enumerate(grams, start=1):
        arrays[f"keys{length}"], arrays[f"counts{length}"] = keys, counts
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".ngram-", suffix=".tmp", dir=directory)
    except OSError as exc:
        logger.warning("cannot cache the trained model in %s: %s", directory, exc)
        return
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(out, **arrays)
        os.replace(temporary, path)
    except OSError as exc:
        logger.warning("cannot cache the trained model at %s: %s", path, exc)
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _read_cache(path: str) -> Optional[Grams]:
    """The cached counts, or None when the file is missing, unreadable or not what this version wrote."""
    try:
        with open(path, "rb") as cached:  # our own handle: np.load leaks its own when parsing fails
            archive = np.load(cached, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            with archive:
                return _checked_grams(archive)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logger.warning("ignoring the unusable model cache %s (%s); retraining", path, exc)
        return None


def _checked_grams(archive: Mapping[str, np.ndarray]) -> Grams:
    if archive["version"].tolist() != [MODEL_VERSION, ORDER]:
        raise ValueError(f"version {archive['version'].tolist()}, expected {[MODEL_VERSION, ORDER]}")
    grams: Grams = []
    for length in range(1, ORDER + 1):
        keys = np.asarray(archive[f"keys{length}"], dtype=np.int64)
        counts = np.asarray(archive[f"counts{length}"], dtype=np.int32)
        sane = (
            keys.ndim == 1
            and keys.shape == counts.shape
            and bool(np.all(np.diff(keys) > 0))
            and bool(np.all(counts > 0))
            and (len(keys) == 0 or (keys[0] >= 0 and keys[-1] < VOCAB_SIZE * _BASE ** (length - 1)))
            and bool(np.all(keys % _BASE < VOCAB_SIZE))
        )
        if not sane:
            raise ValueError(f"inconsistent {length}-gram table")
        grams.append((keys, counts))
    if len(grams[0][0]) == 0:
        raise ValueError("no unigrams")
    return grams
