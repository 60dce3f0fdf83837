"""Sample three completions of a prompt and decode them.

    python examples/quickstart.py

``sample`` returns a ``concurrent.futures.Future`` at once; ``.result()`` waits for it.
"""

from __future__ import annotations

from _connect import MODEL, connect

from tinkex import types


def main() -> None:
    with connect() as service:
        client = service.create_sampling_client(base_model=MODEL)
        tokenizer = client.get_tokenizer()
        prompt = types.ModelInput.from_text("A list comprehension", tokenizer=tokenizer)  # no chat template
        params = types.SamplingParams(max_tokens=60, temperature=0.8, seed=1, stop=["\n\n"])
        future = client.sample(prompt, num_samples=3, sampling_params=params)
        response = future.result(timeout=60)
    for number, sequence in enumerate(response.sequences, start=1):
        text = sequence.decode(tokenizer)
        print(f"{number}. ({len(sequence.tokens)} tokens, stop: {sequence.stop_reason}) A list comprehension{text}")


if __name__ == "__main__":
    main()
