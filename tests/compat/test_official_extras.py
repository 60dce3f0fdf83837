"""The official SDK (the oracle) decodes the local server's answers to the 0.38 request extras
(``topk_sample_logprobs``, ``prompt_logprobs_last_n``, ``target_prompt_logprobs`` dense and
CSR, ``prompt_alt_tokens_k``) from protobuf into exactly what the server's JSON form says
for the same seeded requests, so both encodings and the official checks agree.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
import requests

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]

MODEL = "tinkex/ngram-small"
API_KEY = "tml-compat-extras"
SIDE_SCRIPT = Path(__file__).with_name("official_extras_client.py")
PROMPT = list(b"The sampling client ")
ROWS = len(PROMPT) - 1


def _calls() -> List[Dict[str, Any]]:
    dense = {"data": [t for i in range(ROWS) for t in (PROMPT[i + 1], 32 if i % 2 else -1)], "dtype": "int64",
             "shape": [ROWS, 2]}
    listed = list(range(0, ROWS, 4))
    sparse = {"data": [PROMPT[r + 1] for r in listed], "dtype": "int64", "shape": [ROWS, 3],
              "sparse_crow_indices": [sum(1 for r in listed if r < row) for row in range(ROWS + 1)],
              "sparse_col_indices": [2] * len(listed)}
    params = {"max_tokens": 5, "seed": 9, "temperature": 0.8}
    return [
        {"name": "topk_sample", "prompt": PROMPT, "sampling_params": params, "topk_sample_logprobs": 3},
        {"name": "last_n", "prompt": PROMPT, "sampling_params": params, "include_prompt_logprobs": True,
         "topk_prompt_logprobs": 2, "prompt_logprobs_last_n": 4},
        {"name": "target_dense", "prompt": PROMPT, "sampling_params": params, "target_prompt_logprobs": dense},
        {"name": "target_sparse", "prompt": PROMPT, "sampling_params": params, "target_prompt_logprobs": sparse},
        {"name": "alt_tokens", "prompt": PROMPT, "sampling_params": params, "prompt_alt_tokens_k": 3},
    ]  # fmt: skip


def _raw_json(base_url: str, calls: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The same requests over raw HTTP, answered in the legacy JSON form."""
    http = requests.Session()
    http.headers["X-API-Key"] = API_KEY

    def post(route: str, body: Any) -> Any:
        answer = http.post(f"{base_url}/api/v1/{route}", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    session = post("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "raw", "type": "create_session"})
    sampler = post("create_sampling_session", {"session_id": session["session_id"], "sampling_session_seq_id": 0,
                                               "base_model": MODEL, "type": "create_sampling_session"})
    out = {}
    for seq_id, call in enumerate(calls):
        body = {"num_samples": 1, "prompt": {"chunks": [{"tokens": call["prompt"], "type": "encoded_text"}]},
                "sampling_params": call["sampling_params"], "sampling_session_id": sampler["sampling_session_id"],
                "seq_id": seq_id, "prompt_logprobs": call.get("include_prompt_logprobs", False),
                "topk_prompt_logprobs": call.get("topk_prompt_logprobs", 0),
                "topk_sample_logprobs": call.get("topk_sample_logprobs", 0),
                "prompt_alt_tokens_k": call.get("prompt_alt_tokens_k", 0), "type": "sample"}
        for name in ("target_prompt_logprobs", "prompt_logprobs_last_n"):
            if call.get(name) is not None:
                body[name] = call[name]
        request_id = post("asample", body)["request_id"]
        while True:
            answer = post("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
            if answer.get("type") != "try_again":
                break
        out[call["name"]] = answer
    return out  # fmt: skip


def test_official_sdk_decodes_the_extras_as_the_server_meant_them(official_python: Path, compat_server: Any) -> None:
    calls = _calls()
    spec = {"base_url": compat_server.base_url, "api_key": API_KEY, "base_model": MODEL, "calls": calls}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_", "PYTHON"))}
    done = subprocess.run([str(official_python), str(SIDE_SCRIPT)], input=json.dumps(spec), capture_output=True,
                          text=True, timeout=180, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    official = json.loads(done.stdout)
    assert official["warnings"] == []
    raw = _raw_json(compat_server.base_url, calls)
    for name, theirs in official["results"].items():
        ours = raw[name]
        for field in ("prompt_logprobs", "topk_prompt_logprobs", "target_prompt_logprobs", "prompt_alt_tokens"):
            assert theirs[field] == ours.get(field), (name, field)
        for mine, seq in zip(ours["sequences"], theirs["sequences"]):
            assert (seq["tokens"], seq["logprobs"]) == (mine["tokens"], mine["logprobs"]), name
            assert seq["topk_logprobs"] == mine.get("topk_logprobs"), name
    assert official["results"]["alt_tokens"]["prompt_alt_tokens"]["tokens"]["shape"] == [ROWS, 3]
    assert official["results"]["target_sparse"]["target_prompt_logprobs"]["sparse_col_indices"] == [2] * 5
