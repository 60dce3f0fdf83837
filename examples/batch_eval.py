"""An evaluation loop with futures: word-completion accuracy on sentences from Python's docs.

    python examples/batch_eval.py [N]

Each sentence keeps only the first two letters of its last word; the model completes the
word greedily (temperature 0) until a space or a full stop, and a prediction is right when it
spells the missing word. All samples
are submitted at once (the client queues what the server cannot take yet) and results are
handled as they complete. The local n-gram model was trained on these very docs, so this
measures memorisation; point it at a real model to measure something else. For millions of
prompts, with bounded memory and resumable output, see ``tinkex.batch`` and ``tinkex batch``.
"""

from __future__ import annotations

import re
import sys
import time
from concurrent.futures import as_completed
from typing import List, Tuple

from _connect import MODEL, connect

from tinkex import types

_SENTENCE = re.compile(r"[A-Z][a-z ,]{30,100} [a-z]{3,12}\.")


HINT_LETTERS = 2


def cloze_items(count: int) -> List[Tuple[str, str]]:
    """(prompt, rest of its last word) pairs from the Python docs bundled with the interpreter."""
    try:
        from pydoc_data.topics import topics
        text = " ".join(topics[name] for name in sorted(topics))
    except ImportError:  # some distributions strip pydoc_data
        text = " ".join(str(obj.__doc__) for obj in (list, dict, str, int, open, print))
    items = []
    for match in _SENTENCE.finditer(" ".join(text.split())):
        prompt, _, word = match.group()[:-1].rpartition(" ")
        items.append((prompt + " " + word[:HINT_LETTERS], word[HINT_LETTERS:]))
    return items[:count]


def main(count: int) -> None:
    items = cloze_items(count)
    params = types.SamplingParams(max_tokens=16, temperature=0.0, stop=[" ", "."])
    correct = 0
    with connect() as service:
        client = service.create_sampling_client(base_model=MODEL)
        tokenizer = client.get_tokenizer()
        started = time.monotonic()
        futures = {
            client.sample(types.ModelInput.from_text(prompt, tokenizer=tokenizer), 1, params, timeout=120): word
            for prompt, word in items
        }
        for done, future in enumerate(as_completed(futures), start=1):
            predicted = future.result().sequences[0].decode(tokenizer).rstrip(" .")
            correct += predicted == futures[future]
            if done % 50 == 0 or done == len(futures):
                print(f"{done}/{len(futures)} done, accuracy so far {correct / done:.1%}")
        elapsed = time.monotonic() - started
    print(f"accuracy {correct}/{len(items)} = {correct / max(len(items), 1):.1%}; "
          f"{len(items) / elapsed:.0f} samples/s over {elapsed:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
