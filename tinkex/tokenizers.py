"""Tokenizers by model name: the built-in ``tinkex/byte`` and Hugging Face ``tokenizer.json`` files.

:func:`get_tokenizer` turns a model name (or tokenizer id) into a :class:`Tokenizer`. It never
touches the network. A name is resolved, first match wins:

1. a tokenizer given to :func:`register_tokenizer` under that name;
2. the built-in byte tokenizer, for ``tinkex/byte`` and the local server's models
   (``tinkex/ngram-small``, ``tinkex/echo``);
3. a path to a ``tokenizer.json`` file, or to a directory holding one;
4. ``<dir>/<model name>/tokenizer.json`` for each directory in ``TINKEX_TOKENIZER_PATH``
   (``os.pathsep``-separated), a place to keep tokenizers copied from elsewhere;
5. the local Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``): ``models--<org>--<name>/snapshots/*/tokenizer.json``, as left
   there by ``hf download <org>/<name> tokenizer.json`` or any ``transformers`` load.

A ``:revision`` suffix on a model name (``org/name:rev``) is stripped before steps 2-5. Loading a
``tokenizer.json`` needs the ``tokenizers`` extra (``pip install 'tinkex[tokenizers]'``), imported
only when a file is loaded. Loaded tokenizers are kept in a small LRU cache; a per-name lock
makes concurrent first requests for one name load it once.

Every tokenizer decodes incrementally: ``incremental_decoder().feed(token_id)`` returns only
complete text (never a half UTF-8 character), and joining every ``feed`` result and ``flush()``
gives ``decode(all_ids)``.

Example:
    >>> tok = get_tokenizer("tinkex/ngram-small")
    >>> tok.name, tok.encode("hé")
    ('tinkex/byte', [104, 195, 169])
    >>> decoder = tok.incremental_decoder()
    >>> [decoder.feed(i) for i in [104, 195, 169]] + [decoder.flush()]
    ['h', '', 'é', '']
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Protocol, Sequence, Union

import cachetools

from ._wire.byte_tokenizer import TOKENIZER_ID as BYTE_TOKENIZER_ID
from ._wire.byte_tokenizer import ByteTokenizer
from .errors import ValidationError

__all__ = [
    "Tokenizer",
    "IncrementalDecoder",
    "HuggingFaceTokenizer",
    "TokenizerNotFoundError",
    "get_tokenizer",
    "register_tokenizer",
    "unregister_tokenizer",
    "clear_tokenizer_cache",
    "normalize_model_name",
    "BYTE_TOKENIZER_ID",
    "TOKENIZER_PATH_ENV",
]

logger = logging.getLogger(__name__)

TOKENIZER_PATH_ENV = "TINKEX_TOKENIZER_PATH"
BYTE_MODELS = frozenset({BYTE_TOKENIZER_ID, "tinkex/ngram-small", "tinkex/echo"})
CACHE_SIZE = 8
_TOKENIZER_FILE = "tokenizer.json"
# The official SDK reads every Llama 3 model's tokenizer from this ungated copy.
_LLAMA3_TOKENIZER = "thinkingmachineslabinc/meta-llama-3-tokenizer"
_REPLACEMENT = "\ufffd"


class IncrementalDecoder(Protocol):
    """Turns one token stream into text as it arrives. Not thread-safe: one stream each."""

    def feed(self, token_id: int) -> str:
        """Take one id; return the text it completes (possibly empty)."""

    def flush(self) -> str:
        """End the stream; return any text still held back."""


class Tokenizer(Protocol):
    """What tinkex needs from a tokenizer; implementations are safe to share between threads."""

    @property
    def name(self) -> str:
        """The tokenizer's id or the model it belongs to."""

    @property
    def eos_token_id(self) -> Optional[int]:
        """The id that ends a sequence, None when unknown."""

    @property
    def bos_token_id(self) -> Optional[int]:
        """The id that begins a sequence, None when unknown."""

    def encode(self, text: str) -> List[int]:
        """The ids of ``text`` (with the special tokens the tokenizer adds by default)."""

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``, special tokens skipped."""

    def incremental_decoder(self) -> IncrementalDecoder:
        """A fresh decoder for one token stream."""


class TokenizerNotFoundError(ValidationError):
    """No tokenizer could be found offline for a model, or a tokenizer path names no file.

    Attributes:
        model: the model name (or path) that was looked up.
        path: for a name that is a path (absolute, ``./``, ``~``, or ending in ``.json``),
            the path that holds no tokenizer; None for a model name.

    Example:
        >>> try:
        ...     get_tokenizer("acme/no-such-model")
        ... except TokenizerNotFoundError as exc:
        ...     print(exc.model)
        acme/no-such-model
    """

    def __init__(self, model: str, searched: Sequence[str] = (), *, path: Optional[str] = None) -> None:
        self.model = model
        self.path = path
        if path is not None:
            what = f"no {_TOKENIZER_FILE} in directory" if os.path.isdir(path) else "tokenizer file not found:"
            super().__init__(f"{what} {path!r}", field="model", value=model)
            return
        where = f" (looked in: {'; '.join(searched)})" if searched else ""
        message = (
            f"no tokenizer found for model {model!r}{where}. Provide one in either of two ways: "
            f"register a tokenizer.json with tinkex.tokenizers.register_tokenizer({model!r}, PATH) "
            f"(or put it at <dir>/<model name>/tokenizer.json under a directory listed in "
            f"{TOKENIZER_PATH_ENV}), or place it in the Hugging Face cache, e.g. "
            f"`hf download {normalize_model_name(model) or 'ORG/NAME'} tokenizer.json`. "
            "tinkex never downloads tokenizers itself."
        )
        super().__init__(message, field="model", value=model)


class _WindowedDecoder:
    """Incremental decoding for any tokenizer with a ``decode``: diff two decodes of a short window.

    The window starts one emitted piece back, so tokenizers whose ``decode`` treats the first
    token specially (leading-space rules) still join up exactly; text ending in U+FFFD is held
    back because it is a character whose bytes have not all arrived.
    """

    def __init__(self, decode: Callable[[List[int]], str]) -> None:
        self._decode = decode
        self._ids: List[int] = []
        self._read = 0  # ids before this index have been emitted as text

    def _pending_text(self) -> str:
        emitted = self._decode(self._ids[: self._read])
        return self._decode(self._ids)[len(emitted):]

    def feed(self, token_id: int) -> str:
        self._ids.append(token_id)
        piece = self._pending_text()
        if not piece or piece.endswith(_REPLACEMENT):
            return ""
        self._ids = self._ids[self._read:]  # keep only the last emitted piece as context
        self._read = len(self._ids)
        return piece

    def flush(self) -> str:
        piece = self._pending_text()
        self._ids, self._read = [], 0
        return piece


def _special_token_id(backend: Any, config: Dict[str, Any], key: str) -> Optional[int]:
    token = config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    token_id = backend.token_to_id(token)
    return token_id if isinstance(token_id, int) else None


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class HuggingFaceTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer loaded from a ``tokenizer.json`` file.

    ``bos_token_id`` / ``eos_token_id`` come from a ``tokenizer_config.json`` beside the file,
    when there is one. Safe to share between threads (nothing mutates it after loading).

    Args:
        backend: a ``tokenizers.Tokenizer``.
        name: the name it is known by.
        bos_token_id: the id that begins a sequence, if known.
        eos_token_id: the id that ends a sequence, if known.

    Example:
        >>> tok = HuggingFaceTokenizer.from_file("tokenizer.json")  # doctest: +SKIP
        >>> tok.decode(tok.encode("hello"))  # doctest: +SKIP
        'hello'
    """

    def __init__(
        self, backend: Any, name: str, *, bos_token_id: Optional[int] = None, eos_token_id: Optional[int] = None
    ) -> None:
        self.backend = backend
        self.name = name
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    @classmethod
    def from_file(cls, path: str, *, name: Optional[str] = None) -> HuggingFaceTokenizer:
        """Load ``path`` (a ``tokenizer.json``).

        Raises:
            ValidationError: the ``tokenizers`` extra is missing or the file cannot be loaded.
        """
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise ValidationError(
                f"loading {path!r} needs the 'tokenizers' package: pip install 'tinkex[tokenizers]'",
                field="tokenizer", value=path,
            ) from None
        try:
            backend = Backend.from_file(path)
        except Exception as exc:  # the Rust side raises plain Exception subclasses
            raise ValidationError(f"cannot load tokenizer {path!r}: {exc}", field="tokenizer", value=path) from None
        config = _read_json(os.path.join(os.path.dirname(path), "tokenizer_config.json"))
        return cls(
            backend, name or path,
            bos_token_id=_special_token_id(backend, config, "bos_token"),
            eos_token_id=_special_token_id(backend, config, "eos_token"),
        )

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size())

    def encode(self, text: str, *, add_special_tokens: bool = True) -> List[int]:
        """The ids of ``text``; ``add_special_tokens`` applies the file's post-processor (e.g. BOS)."""
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {text!r}", field="text", value=text)
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def incremental_decoder(self) -> IncrementalDecoder:
        return _WindowedDecoder(self.decode)

    def __repr__(self) -> str:
        return f"<HuggingFaceTokenizer {self.name!r} vocab={self.vocab_size}>"


# ---------------------------------------------------------------- name resolution


def normalize_model_name(name: str) -> str:
    """``name`` without a ``:revision`` suffix (``"org/model:rev"`` -> ``"org/model"``)."""
    return name.split(":", 1)[0].strip()


def _file_in(path: str) -> Optional[str]:
    candidate = os.path.join(path, _TOKENIZER_FILE) if os.path.isdir(path) else path
    return candidate if os.path.isfile(candidate) else None


def hf_hub_cache() -> str:
    """Where the Hugging Face hub keeps downloads, by its own rules (read now, not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return explicit
    home = os.environ.get("HF_HOME")
    if not home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "huggingface")
    return os.path.join(home, "hub")


def _snapshot_file(repo_dir: str) -> Optional[str]:
    """The tokenizer.json of the ``main`` snapshot, else of the newest snapshot that has one."""
    snapshots = os.path.join(repo_dir, "snapshots")
    try:
        with open(os.path.join(repo_dir, "refs", "main"), encoding="utf-8") as ref:
            main = _file_in(os.path.join(snapshots, ref.read().strip(), _TOKENIZER_FILE))
        if main:
            return main
    except OSError:
        pass
    try:
        found = [_file_in(os.path.join(snapshots, entry, _TOKENIZER_FILE)) for entry in os.listdir(snapshots)]
    except OSError:
        return None
    files = [path for path in found if path]
    return max(files, key=os.path.getmtime) if files else None


def _hub_repo_ids(model: str) -> List[str]:
    ids = [model]
    if "llama-3" in model.lower() and model != _LLAMA3_TOKENIZER:
        ids.append(_LLAMA3_TOKENIZER)
    return ids


def _search_path_dirs() -> List[str]:
    raw = os.environ.get(TOKENIZER_PATH_ENV, "")
    return [entry for entry in raw.split(os.pathsep) if entry.strip()]


def _find_file(name: str, searched: List[str]) -> Optional[str]:
    direct = _file_in(os.path.expanduser(name))
    if direct:
        return direct
    model = normalize_model_name(name)
    for directory in _search_path_dirs():
        searched.append(f"{TOKENIZER_PATH_ENV} entry {directory}")
        found = _file_in(os.path.join(directory, model, _TOKENIZER_FILE))
        if found:
            return found
    hub = hf_hub_cache()
    searched.append(f"the Hugging Face cache {hub}")
    for repo_id in _hub_repo_ids(model):
        if repo_id.count("/") == 1:
            found = _snapshot_file(os.path.join(hub, "models--" + repo_id.replace("/", "--")))
            if found:
                return found
    return None


# ---------------------------------------------------------------- the registry and its cache

TokenizerSource = Union[str, "os.PathLike[str]", Tokenizer]

_BYTE = ByteTokenizer()
_lock = threading.Lock()  # guards _registered, _cache and _loading
_registered: Dict[str, TokenizerSource] = {}
_cache: cachetools.LRUCache[str, Tokenizer] = cachetools.LRUCache(maxsize=CACHE_SIZE)
_loading: Dict[str, threading.Lock] = {}  # one lock per name being loaded right now


def register_tokenizer(name: str, source: TokenizerSource) -> None:
    """Use ``source`` for model ``name`` from now on (in this process).

    Args:
        name: a model name or tokenizer id, e.g. ``"meta-llama/Llama-3.1-8B"``.
        source: a path to a ``tokenizer.json`` (or a directory holding one), or a ready tokenizer.

    Raises:
        ValidationError: ``name`` is empty, or ``source`` is a path with no tokenizer.json.

    Example:
        >>> register_tokenizer("my/model", get_tokenizer("tinkex/byte"))
        >>> get_tokenizer("my/model:v2").name
        'tinkex/byte'
        >>> unregister_tokenizer("my/model")
    """
    key = _checked_name(name)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if _file_in(os.path.expanduser(path)) is None:
            raise ValidationError(f"no tokenizer.json at {path!r}", field="source", value=path)
    with _lock:
        _registered[normalize_model_name(key) or key] = source
        _cache.clear()  # a registration may shadow an entry cached under another spelling


def unregister_tokenizer(name: str) -> None:
    """Forget a :func:`register_tokenizer` entry (a no-op when there is none)."""
    key = _checked_name(name)
    with _lock:
        _registered.pop(normalize_model_name(key) or key, None)
        _cache.clear()


def clear_tokenizer_cache() -> None:
    """Drop every loaded tokenizer (they are loaded again on next use)."""
    with _lock:
        _cache.clear()


def _checked_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"a model name is needed to find a tokenizer, got {name!r}", field="model", value=name)
    return name.strip()


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer for a model name or tokenizer id (see the module docs for the search order).

    Raises:
        TokenizerNotFoundError: nothing found offline; the message says how to provide one.
        ValidationError: an empty name, or a file that cannot be loaded.
    """
    key = _checked_name(name)
    with _lock:
        hit = _cache.get(key)
        if hit is not None:
            return hit
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # a second thread asking for the same name waits here, then finds it cached
        try:
            with _lock:
                hit = _cache.get(key)
            if hit is not None:
                return hit
            tokenizer = _load(key)
            with _lock:
                _cache[key] = tokenizer
            return tokenizer
        finally:
            with _lock:
                if _loading.get(key) is loading:
                    del _loading[key]


def _load(name: str) -> Tokenizer:
    model = normalize_model_name(name)
    with _lock:
        source = _registered.get(model) or _registered.get(name)
    if source is None and model in BYTE_MODELS:
        return _BYTE
    if source is None:
        return _load_found(name, model)
    if not isinstance(source, (str, os.PathLike)):
        return source
    path = _file_in(os.path.expanduser(os.fspath(source)))
    if path is None:  # the file went away after it was registered
        raise TokenizerNotFoundError(name, [f"the registered path {os.fspath(source)}"])
    return HuggingFaceTokenizer.from_file(path, name=model)


def _looks_like_path(name: str) -> bool:
    """A name only a path would have: absolute, relative to ``.``/``~``, or a ``.json`` file."""
    return os.path.isabs(name) or name.startswith((".", "~")) or name.lower().endswith(".json")


def _load_found(name: str, model: str) -> Tokenizer:
    if _looks_like_path(name) and _file_in(os.path.expanduser(name)) is None:
        raise TokenizerNotFoundError(name, path=os.path.expanduser(name))  # a path: no download advice
    searched: List[str] = []
    path = _find_file(name, searched)
    if path is None:
        raise TokenizerNotFoundError(name, searched)
    logger.debug("loading the tokenizer of %s from %s", name, path)
    is_path = _file_in(os.path.expanduser(name)) is not None
    return HuggingFaceTokenizer.from_file(path, name=path if is_path else model)
