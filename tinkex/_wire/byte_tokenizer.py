"""The ``tinkex/byte`` tokenizer: one token per UTF-8 byte, plus BOS and EOS.

The local server's models speak this vocabulary, so the client can turn their tokens back
into text without any third-party tokenizer. Ids 0-255 are the bytes themselves,
``BOS_ID`` (256) begins a sequence and ``EOS_ID`` (257) ends one; special ids decode to no text.
"""

from __future__ import annotations

import codecs
from typing import Iterable, List

from ..errors import ValidationError

__all__ = ["TOKENIZER_ID", "BOS_ID", "EOS_ID", "VOCAB_SIZE", "ByteTokenizer", "IncrementalTextDecoder"]

TOKENIZER_ID = "tinkex/byte"
BOS_ID = 256
EOS_ID = 257
VOCAB_SIZE = 258

# Precomputed once so the per-token streaming path does no allocation for ASCII.
_BYTE_OF = [bytes((value,)) for value in range(256)]
_ASCII_TEXT = [chr(value) for value in range(128)]


def _check_token(token_id: int) -> None:
    if not 0 <= token_id < VOCAB_SIZE:
        raise ValidationError(
            f"token_id must be in [0, {VOCAB_SIZE}) for {TOKENIZER_ID}, got {token_id!r}",
            field="token_id",
            value=token_id,
        )


class IncrementalTextDecoder:
    """Decodes a token stream to text as it arrives, never splitting a UTF-8 character.

    ``feed`` returns only text that is complete; the bytes of a character split across tokens
    are held back until its last byte arrives. Joining every ``feed`` result and ``flush()``
    gives exactly ``ByteTokenizer().decode(all_ids)``. Not thread-safe: one stream per decoder.

    Example:
        >>> decoder = ByteTokenizer().incremental_decoder()
        >>> [decoder.feed(t) for t in "é!".encode()] + [decoder.flush()]
        ['', 'é', '!', '']
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._holding = False

    def feed(self, token_id: int) -> str:
        """Take one token id; return the text it completes (possibly empty)."""
        if not self._holding and 0 <= token_id < 128:
            return _ASCII_TEXT[token_id]
        _check_token(token_id)
        if token_id >= 256:
            return ""
        text = self._decoder.decode(_BYTE_OF[token_id])
        self._holding = bool(self._decoder.getstate()[0])
        return text

    def flush(self) -> str:
        """End the stream: held-back bytes of an unfinished character become U+FFFD."""
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._holding = False
        return text


class ByteTokenizer:
    """Encodes text as UTF-8 bytes and decodes ids back, skipping BOS and EOS.

    Stateless and safe to share between threads.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.encode("hé", add_bos=True)
        [256, 104, 195, 169]
        >>> tok.decode([256, 104, 195, 169, 257])
        'hé'
    """

    name = TOKENIZER_ID
    vocab_size = VOCAB_SIZE
    bos_token_id = BOS_ID
    eos_token_id = EOS_ID

    def __repr__(self) -> str:
        return f"<ByteTokenizer {self.name!r} vocab={self.vocab_size}>"

    def encode(self, text: str, *, add_bos: bool = False) -> List[int]:
        """The UTF-8 bytes of ``text`` as ids, after BOS when ``add_bos``.

        Raises:
            ValidationError: ``text`` is not a str or holds lone surrogates.
        """
        if not isinstance(text, str):
            raise ValidationError(f"text must be a str, got {text!r}", field="text", value=text)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValidationError(f"text is not encodable as UTF-8: {exc.reason}", field="text") from None
        ids = list(data)
        return [BOS_ID, *ids] if add_bos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of ``ids``: special ids skipped, invalid UTF-8 replaced by U+FFFD.

        Raises:
            ValidationError: an id outside the vocabulary.
        """
        data = bytearray()
        for token_id in ids:
            if not 0 <= token_id < 256:
                _check_token(token_id)
                continue
            data.append(token_id)
        return data.decode("utf-8", errors="replace")

    def decode_token(self, token_id: int) -> bytes:
        """The raw byte of one id; ``b""`` for BOS and EOS."""
        _check_token(token_id)
        return _BYTE_OF[token_id] if token_id < 256 else b""

    def incremental_decoder(self) -> IncrementalTextDecoder:
        """A fresh decoder for one token stream."""
        return IncrementalTextDecoder()
