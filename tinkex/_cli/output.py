"""What the ``tinkex`` command prints for a result: text, or JSON lines with ``--json``.

A streamed answer is printed as it arrives, decoded token by token per sequence (sequences may
interleave), and the stream is closed on the way out so the server stops generating at once.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Dict, Iterator, List, TextIO, Tuple

from ..tokenizers import IncrementalDecoder, Tokenizer
from ..types import SampleResponse, SampleStreamChunk

__all__ = ["emit", "print_response", "stream_chunks"]


def emit(record: Dict[str, Any], out: TextIO) -> None:
    """Write ``record`` as one JSON line and flush it (a reader sees each line at once)."""
    out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()


def print_response(response: SampleResponse, tokenizer: Tokenizer, args: argparse.Namespace, out: TextIO) -> None:
    """Print each sequence's text (a header per sample when there are several), or one JSON line."""
    texts = response.texts(tokenizer)
    if args.json:
        sequences = [
            {"text": text, "tokens": seq.tokens, "logprobs": seq.logprobs, "stop_reason": seq.stop_reason.value}
            for text, seq in zip(texts, response.sequences)
        ]
        emit({"model": args.model, "prompt": args.prompt, "sequences": sequences}, out)
        return
    for number, (text, seq) in enumerate(zip(texts, response.sequences), start=1):
        if len(texts) > 1:
            out.write(f"--- sample {number}/{len(texts)} (stop: {seq.stop_reason.value}) ---\n")
        out.write(text + "\n")
    out.flush()


class _Transcript:
    """The text of each streamed sequence, decoded piece by piece (sequences may interleave)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._decoders: Dict[int, IncrementalDecoder] = {}
        self._pieces: Dict[int, List[str]] = {}

    def feed(self, index: int, token_id: int) -> str:
        if index not in self._decoders:
            self._decoders[index] = self._tokenizer.incremental_decoder()
            self._pieces[index] = []
        piece = self._decoders[index].feed(token_id)
        self._pieces[index].append(piece)
        return piece

    def finish(self, index: int) -> Tuple[str, str]:
        """The held-back tail of sequence ``index`` and its whole text."""
        decoder = self._decoders.pop(index, None)
        tail = decoder.flush() if decoder is not None else ""
        return tail, "".join(self._pieces.pop(index, [])) + tail


def stream_chunks(chunks: Iterator[SampleStreamChunk], tokenizer: Tokenizer, args: argparse.Namespace,
                  out: TextIO) -> None:
    """Print a streamed answer as it arrives; the stream is closed however this ends."""
    transcript = _Transcript(tokenizer)
    try:
        for chunk in chunks:
            index = chunk.sequence_index
            if chunk.is_token and chunk.token_id is not None:
                piece = transcript.feed(index, chunk.token_id)
                if args.json:
                    emit({"type": "token", "sequence_index": index, "index": chunk.index, "token_id": chunk.token_id,
                           "text": piece, "logprob": chunk.logprob}, out)
                elif piece:
                    out.write(piece)
                    out.flush()
            elif chunk.is_done:
                _finish_sequence(chunk, *transcript.finish(index), args, out)
    finally:  # on Ctrl-C or an error too: the server stops generating at once
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _finish_sequence(chunk: SampleStreamChunk, tail: str, text: str, args: argparse.Namespace, out: TextIO) -> None:
    if args.json:
        reason = chunk.finish_reason.value if chunk.finish_reason is not None else None
        emit({"type": "done", "sequence_index": chunk.sequence_index, "finish_reason": reason,
               "total_tokens": chunk.total_tokens, "text": text}, out)
    else:
        out.write(tail + "\n")
        out.flush()


