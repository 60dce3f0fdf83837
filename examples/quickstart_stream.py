"""Stream a completion and print the text as it is generated (this is what `make demo` runs).

    python examples/quickstart_stream.py ["your prompt"]

The first run trains the local n-gram model on Python's bundled documentation (a few seconds,
then cached on disk); later runs start at once.
"""

from __future__ import annotations

import sys
import time

from _connect import MODEL, connect

from tinkex import types

PROMPT = "The Python interpreter"


def main(prompt: str) -> None:
    started = time.monotonic()
    with connect() as service:
        client = service.create_sampling_client(base_model=MODEL)
        ready = time.monotonic()
        prompt_input = types.ModelInput.from_text(prompt, tokenizer=client.get_tokenizer())
        params = types.SamplingParams(max_tokens=200, temperature=0.7, top_p=0.95, seed=7)
        print(f"[{MODEL}] {prompt}", end="", flush=True)
        pieces = []
        for piece in client.stream_text(prompt_input, params, timeout=60):
            print(piece, end="", flush=True)
            pieces.append(piece)
        done = time.monotonic()
    print(f"\n\n({len(''.join(pieces))} characters streamed in {done - ready:.2f} s; "
          f"set-up took {ready - started:.2f} s)")


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or PROMPT)
