"""Runs inside the side virtualenv: drives the official ``tinker`` SDK and prints JSON.

Input (stdin), a JSON object::

    {"base_url": "http://127.0.0.1:PORT", "api_key": "tml-...", "base_model": "tinkex/ngram-small",
     "calls": [{"name": "...", "method": "sample", "prompt": [ints], "num_samples": 2,
                "sampling_params": {...}, "include_prompt_logprobs": false, "topk_prompt_logprobs": 0},
               {"name": "...", "method": "compute_logprobs", "prompt": [ints]}]}

Output (stdout), one JSON object: ``tinker_version``, ``results`` (per call name, in the plain
JSON shape of tinkex's ``SampleResponse.to_json``: sequences with tokens, logprobs, stop_reason,
sequence_id; prompt_logprobs; topk_prompt_logprobs as ``[[token, logprob], ...]`` rows),
``warnings`` (Python warnings and WARNING+ log records of the SDK) and ``client_type`` (what
``create_sampling_client`` returned). This file must not import tinkex: only the official SDK
is installed where it runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any, Dict, List


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name} {record.levelname}: {record.getMessage()}")


def _reason(value: Any) -> str:
    return str(getattr(value, "value", value))


def _topk(rows: Any) -> Any:
    if rows is None:
        return None
    return [None if row is None else [[int(token), float(logprob)] for token, logprob in row] for row in rows]


def _floats(values: Any) -> Any:
    return None if values is None else [None if v is None else float(v) for v in values]


def _sample_json(response: Any) -> Dict[str, Any]:
    return {
        "sequences": [
            {"tokens": [int(t) for t in seq.tokens], "logprobs": _floats(seq.logprobs),
             "stop_reason": _reason(seq.stop_reason), "sequence_id": seq.sequence_id}
            for seq in response.sequences
        ],
        "prompt_logprobs": _floats(response.prompt_logprobs),
        "topk_prompt_logprobs": _topk(response.topk_prompt_logprobs),
    }


def _run_call(client: Any, types: Any, call: Dict[str, Any]) -> Any:
    prompt = types.ModelInput.from_ints(call["prompt"])
    if call["method"] == "compute_logprobs":
        return _floats(client.compute_logprobs(prompt).result(timeout=60))
    future = client.sample(
        prompt=prompt, num_samples=call["num_samples"], sampling_params=types.SamplingParams(**call["sampling_params"]),
        include_prompt_logprobs=call.get("include_prompt_logprobs", False),
        topk_prompt_logprobs=call.get("topk_prompt_logprobs", 0),
    )
    return _sample_json(future.result(timeout=60))


def _ready_client(created: Any) -> Any:
    # 0.38 returns a future of the client (the wrapper also acts as the client, deprecated);
    # older versions return the client itself.
    result = getattr(created, "result", None)
    return result(timeout=60) if callable(result) else created


def main() -> int:
    spec = json.load(sys.stdin)
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tinker
        from tinker import types

        started = time.perf_counter()
        service = tinker.ServiceClient(base_url=spec["base_url"], api_key=spec["api_key"])
        created = service.create_sampling_client(base_model=spec["base_model"])
        client = _ready_client(created)
        results = {call["name"]: _run_call(client, types, call) for call in spec["calls"]}
        closing = service.close("success")
        if closing is not None and callable(getattr(closing, "result", None)):
            closing.result(timeout=60)
        elapsed = time.perf_counter() - started
    notes = [f"{w.category.__name__}: {w.message}" for w in caught] + collect.messages
    out = {
        "tinker_version": getattr(tinker, "__version__", None),
        "client_type": f"{type(created).__module__}.{type(created).__qualname__}",
        "results": results,
        "warnings": notes,
        "seconds": round(elapsed, 3),
    }
    json.dump(out, sys.stdout, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
