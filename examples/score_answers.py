"""Rank candidate answers by the model's logprob of each answer after the question.

    python examples/score_answers.py

``compute_logprobs(prompt)`` returns a future of one logprob per prompt token (the first is
None). Scoring ``question + answer`` and summing the answer's positions gives
log p(answer | question). Every candidate is submitted before any result is awaited, so they
are scored concurrently.
"""

from __future__ import annotations

from _connect import MODEL, connect

from tinkex import types

QUESTIONS = {
    "A function definition is an executable": [" statement", " program", " banana", " file"],
    "Strings are immutable": [" sequences", " numbers", " files"],
    "The keyword that starts a function definition in Python is": [' "def"', ' "function"', ' "lambda"'],
}


def main() -> None:
    with connect() as service:
        client = service.create_sampling_client(base_model=MODEL)
        tokenizer = client.get_tokenizer()
        futures = {}
        for question, answers in QUESTIONS.items():
            question_ids = tokenizer.encode(question)
            for answer in answers:
                prompt = types.ModelInput.from_ints(question_ids + tokenizer.encode(answer))
                futures[question, answer] = (len(question_ids), client.compute_logprobs(prompt))
        scores = {key: sum(future.result(timeout=60)[start:]) for key, (start, future) in futures.items()}
    for question, answers in QUESTIONS.items():
        ranked = sorted(answers, key=lambda answer: scores[question, answer], reverse=True)
        print(f"{question} ...")
        for answer in ranked:
            print(f"  {scores[question, answer]:8.2f}  {answer.strip()}")
        print(f"  best: {ranked[0].strip()}")


if __name__ == "__main__":
    main()
