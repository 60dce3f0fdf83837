"""ModelInput and its chunks: the prompt as it travels on the wire."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Dict, Iterable, List, Optional, Union

import attrs

from ..errors import DecodeError, ValidationError
from ._wire import get_field, int_list, require_mapping

__all__ = ["EncodedTextChunk", "ImageChunk", "ImageAssetPointerChunk", "ModelInputChunk", "ModelInput"]

_IMAGE_FORMATS = ("png", "jpeg")


def _check_tokens(tokens: Any, field: str = "tokens") -> List[int]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Iterable):
        raise ValidationError(f"{field} must be a list of ints, got {tokens!r}", field=field, value=tokens)
    tokens = list(tokens)
    for token in tokens:
        if isinstance(token, bool) or not isinstance(token, int):
            raise ValidationError(f"{field} must hold ints, got {token!r}", field=field, value=token)
        if token < 0:
            raise ValidationError(f"{field} must be non-negative, got {token!r}", field=field, value=token)
    return [int(token) for token in tokens]


def _check_format(fmt: Any) -> str:
    if fmt not in _IMAGE_FORMATS:
        raise ValidationError(f"format must be 'png' or 'jpeg', got {fmt!r}", field="format", value=fmt)
    return str(fmt)


def _check_expected_tokens(value: Any) -> Optional[int]:
    if value is not None and (type(value) is not int or value < 0):
        raise ValidationError(
            f"expected_tokens must be a non-negative int, got {value!r}", field="expected_tokens", value=value
        )
    return value


def _image_length(expected_tokens: Optional[int]) -> int:
    if expected_tokens is None:
        raise ValidationError("an image chunk needs expected_tokens to have a length", field="expected_tokens")
    return expected_tokens


@attrs.frozen
class EncodedTextChunk:
    """A run of token ids.

    Example:
        >>> EncodedTextChunk(tokens=[1, 2, 3]).length
        3
    """

    tokens: List[int] = attrs.field(converter=_check_tokens)
    type: str = attrs.field(default="encoded_text", init=False)

    @property
    def length(self) -> int:
        return len(self.tokens)

    def to_json(self) -> Dict[str, Any]:
        return {"tokens": self.tokens, "type": "encoded_text"}


@attrs.frozen
class ImageChunk:
    """An inline image; ``data`` is raw bytes and travels base64-encoded.

    Example:
        >>> ImageChunk(data=b"ab", format="png", expected_tokens=4).to_json()["data"]
        'YWI='
    """

    data: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    format: str = attrs.field(converter=_check_format)
    expected_tokens: Optional[int] = attrs.field(default=None, converter=_check_expected_tokens)
    type: str = attrs.field(default="image", init=False)

    @property
    def length(self) -> int:
        return _image_length(self.expected_tokens)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"data": base64.b64encode(self.data).decode("ascii"), "format": self.format}
        if self.expected_tokens is not None:
            out["expected_tokens"] = self.expected_tokens
        out["type"] = "image"
        return out


@attrs.frozen
class ImageAssetPointerChunk:
    """An image the server fetches from ``location``.

    Example:
        >>> ImageAssetPointerChunk(format="jpeg", location="s3://b/k.jpg").type
        'image_asset_pointer'
    """

    format: str = attrs.field(converter=_check_format)
    location: str = attrs.field(validator=attrs.validators.instance_of(str))
    expected_tokens: Optional[int] = attrs.field(default=None, converter=_check_expected_tokens)
    type: str = attrs.field(default="image_asset_pointer", init=False)

    @property
    def length(self) -> int:
        return _image_length(self.expected_tokens)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"format": self.format, "location": self.location}
        if self.expected_tokens is not None:
            out["expected_tokens"] = self.expected_tokens
        out["type"] = "image_asset_pointer"
        return out


ModelInputChunk = Union[EncodedTextChunk, ImageChunk, ImageAssetPointerChunk]
_CHUNK_TYPES = (EncodedTextChunk, ImageChunk, ImageAssetPointerChunk)


def _check_chunks(chunks: Any) -> List[ModelInputChunk]:
    if isinstance(chunks, (str, bytes)) or not isinstance(chunks, Iterable):
        raise ValidationError(f"chunks must be a list of chunks, got {chunks!r}", field="chunks", value=chunks)
    chunks = list(chunks)
    checked: List[ModelInputChunk] = []
    for chunk in chunks:
        if not isinstance(chunk, _CHUNK_TYPES):
            raise ValidationError(f"not a ModelInput chunk: {chunk!r}", field="chunks", value=chunk)
        checked.append(chunk)
    return checked


def _decode_chunk(data: Any) -> ModelInputChunk:
    chunk = require_mapping(data, "ModelInput chunk")
    kind = chunk.get("type")
    try:
        if kind == "encoded_text":
            return EncodedTextChunk(tokens=int_list(get_field(chunk, "tokens", "EncodedTextChunk"), "tokens"))
        if kind == "image":
            raw = get_field(chunk, "data", "ImageChunk", str)
            return ImageChunk(
                data=base64.b64decode(raw, validate=True),
                format=get_field(chunk, "format", "ImageChunk", str),
                expected_tokens=get_field(chunk, "expected_tokens", "ImageChunk", int, None),
            )
        if kind == "image_asset_pointer":
            return ImageAssetPointerChunk(
                format=get_field(chunk, "format", "ImageAssetPointerChunk", str),
                location=get_field(chunk, "location", "ImageAssetPointerChunk", str),
                expected_tokens=get_field(chunk, "expected_tokens", "ImageAssetPointerChunk", int, None),
            )
    except (ValidationError, binascii.Error) as exc:
        raise DecodeError(f"invalid {kind} chunk: {exc}") from None
    raise DecodeError(f"unknown ModelInput chunk type {kind!r}")


@attrs.frozen
class ModelInput:
    """A prompt: a list of chunks, most often one run of token ids.

    Values are immutable: ``append`` and ``append_int`` return new inputs.

    Example:
        >>> prompt = ModelInput.from_ints([1, 2]).append_int(3)
        >>> prompt.to_ints(), prompt.length
        ([1, 2, 3], 3)
    """

    chunks: List[ModelInputChunk] = attrs.field(converter=_check_chunks)

    @classmethod
    def from_ints(cls, tokens: Iterable[int]) -> ModelInput:
        """Build an input of one text chunk from token ids."""
        return cls(chunks=[EncodedTextChunk(tokens=tokens)])

    @classmethod
    def from_text(cls, text: str, *, model_name: Optional[str] = None, tokenizer: Any = None) -> ModelInput:
        """Encode ``text`` with the model's tokenizer into an input of one text chunk.

        The text is encoded as is: **no chat template is applied** (build chat prompts with
        your own template, then pass the string or its ids).

        Args:
            text: the prompt text.
            model_name: the model whose tokenizer to use (see :func:`tinkex.tokenizers.get_tokenizer`).
            tokenizer: a tokenizer to use instead of looking one up by ``model_name``.

        Raises:
            ValidationError: neither ``model_name`` nor ``tokenizer`` given, or ``text`` not a str.
            tinkex.tokenizers.TokenizerNotFoundError: no tokenizer found offline for ``model_name``.

        Example:
            >>> ModelInput.from_text("Hi", model_name="tinkex/ngram-small").to_ints()
            [72, 105]
        """
        if tokenizer is None:
            if model_name is None:
                raise ValidationError("model_name is required to encode text", field="model_name", value=None)
            from ..tokenizers import get_tokenizer

            tokenizer = get_tokenizer(model_name)
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {type(text).__name__}", field="text",
                                  value=type(text).__name__)
        return cls.from_ints(tokenizer.encode(text))

    @classmethod
    def empty(cls) -> ModelInput:
        return cls(chunks=[])

    def to_ints(self) -> List[int]:
        """Return all token ids; raises ``ValidationError`` if an image chunk is present."""
        out: List[int] = []
        for chunk in self.chunks:
            if not isinstance(chunk, EncodedTextChunk):
                raise ValidationError("Cannot convert non-text chunk to ints", field="chunks", value=chunk.type)
            out.extend(chunk.tokens)
        return out

    @property
    def length(self) -> int:
        return sum(chunk.length for chunk in self.chunks)

    def append(self, chunk: ModelInputChunk) -> ModelInput:
        return ModelInput(chunks=[*self.chunks, chunk])

    def append_int(self, token: int) -> ModelInput:
        """Return an input with ``token`` added to the last text chunk (or a new one)."""
        if self.chunks and isinstance(self.chunks[-1], EncodedTextChunk):
            last = self.chunks[-1]
            return ModelInput(chunks=[*self.chunks[:-1], EncodedTextChunk(tokens=[*last.tokens, token])])
        return self.append(EncodedTextChunk(tokens=[token]))

    def to_json(self) -> Dict[str, Any]:
        return {"chunks": [chunk.to_json() for chunk in self.chunks]}

    @classmethod
    def from_json(cls, data: Any) -> ModelInput:
        mapping = require_mapping(data, "ModelInput")
        chunks = get_field(mapping, "chunks", "ModelInput", list)
        return cls(chunks=[_decode_chunk(chunk) for chunk in chunks])
