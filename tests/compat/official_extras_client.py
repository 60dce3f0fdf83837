"""Runs inside the side virtualenv: the official SDK's ``sample`` with the 0.38 request extras.

Input (stdin): ``{"base_url", "api_key", "base_model", "calls": [{"name", "prompt": [ints],
"sampling_params": {...}, "include_prompt_logprobs", "topk_prompt_logprobs",
"topk_sample_logprobs", "target_prompt_logprobs": TensorData JSON or null,
"prompt_alt_tokens_k", "prompt_logprobs_last_n"}]}``. Output (stdout): ``{"results": {name:
answer}}`` where an answer holds what the SDK decoded (from protobuf) as plain JSON, and
``"warnings"``. Must not import tinkex.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any, Dict, Optional


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


def _tensor(tensor: Any) -> Optional[Dict[str, Any]]:
    if tensor is None:
        return None
    out = {"data": _plain(tensor.data), "dtype": tensor.dtype, "shape": _plain(tensor.shape)}
    for name in ("sparse_crow_indices", "sparse_col_indices"):
        if getattr(tensor, name, None) is not None:
            out[name] = _plain(getattr(tensor, name))
    return out


def _topk(rows: Any) -> Any:
    if rows is None:
        return None
    return [None if row is None else [[int(t), float(v)] for t, v in row] for row in rows]


def _answer(response: Any) -> Dict[str, Any]:
    alt = response.prompt_alt_tokens
    alt_json = None if alt is None else {"tokens": _tensor(alt.tokens), "logprobs": _tensor(alt.logprobs)}
    return {
        "sequences": [{"tokens": [int(t) for t in seq.tokens], "logprobs": [float(v) for v in seq.logprobs],
                       "topk_logprobs": _topk(seq.topk_logprobs)} for seq in response.sequences],
        "prompt_logprobs": None if response.prompt_logprobs is None else [
            None if v is None else float(v) for v in response.prompt_logprobs],
        "topk_prompt_logprobs": _topk(response.topk_prompt_logprobs),
        "target_prompt_logprobs": _tensor(response.target_prompt_logprobs),
        "prompt_alt_tokens": alt_json,
    }  # fmt: skip


def main() -> int:
    spec = json.load(sys.stdin)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import tinker
        from tinker import types

        service = tinker.ServiceClient(base_url=spec["base_url"], api_key=spec["api_key"])
        created = service.create_sampling_client(base_model=spec["base_model"])
        client = created.result(timeout=60) if callable(getattr(created, "result", None)) else created
        results = {}
        for call in spec["calls"]:
            target = call.get("target_prompt_logprobs")
            future = client.sample(
                prompt=types.ModelInput.from_ints(call["prompt"]), num_samples=1,
                sampling_params=types.SamplingParams(**call["sampling_params"]),
                include_prompt_logprobs=call.get("include_prompt_logprobs", False),
                topk_prompt_logprobs=call.get("topk_prompt_logprobs", 0),
                topk_sample_logprobs=call.get("topk_sample_logprobs", 0),
                target_prompt_logprobs=None if target is None else types.TensorData(**target),
                prompt_alt_tokens_k=call.get("prompt_alt_tokens_k", 0),
                prompt_logprobs_last_n=call.get("prompt_logprobs_last_n"),
            )  # fmt: skip
            results[call["name"]] = _answer(future.result(timeout=60))
        closing = service.close("success")
        if closing is not None and callable(getattr(closing, "result", None)):
            closing.result(timeout=60)
    json.dump({"results": results, "warnings": [str(w.message) for w in caught]}, sys.stdout, allow_nan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
