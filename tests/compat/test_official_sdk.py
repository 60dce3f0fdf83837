"""The official ``tinker`` SDK against the local server gives what tinkex gives.

The official SDK (pinned version, in a side venv) runs in a subprocess: ServiceClient ->
create_sampling_client -> sample (2 samples, stop strings, seed) -> sample with prompt
logprobs and top-k -> compute_logprobs -> close. tinkex then sends the same requests to the
same server; seeded sampling is deterministic, so both must decode identical results:
tokens, float32 logprobs, stop reasons, prompt logprobs and top-k rows.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest

import tinkex
from tinkex import types

from .official_venv import OFFICIAL_VERSION

pytestmark = [pytest.mark.compat, pytest.mark.timeout(600)]  # the first venv build downloads the SDK

MODEL = "tinkex/ngram-small"
API_KEY = "tml-compat-check"
SIDE_SCRIPT = Path(__file__).with_name("official_client.py")
PROMPT = list(b"The sampling client ")
STOPS = [". ", ", ", "\n\n"]


def _calls() -> List[Dict[str, Any]]:
    stop_samples = [
        {"name": f"stop_seed_{seed}", "method": "sample", "prompt": PROMPT, "num_samples": 2,
         "sampling_params": {"max_tokens": 64, "seed": seed, "stop": STOPS, "temperature": 0.7}}
        for seed in (3, 11, 12)
    ]
    return stop_samples + [
        {"name": "prompt_logprobs_topk", "method": "sample", "prompt": PROMPT, "num_samples": 1,
         "sampling_params": {"max_tokens": 8, "seed": 5, "temperature": 1.0, "top_k": 20, "top_p": 0.95},
         "include_prompt_logprobs": True, "topk_prompt_logprobs": 3},
        {"name": "compute_logprobs", "method": "compute_logprobs", "prompt": PROMPT + list(b"samples text.")},
    ]


def _run_official(python: Path, base_url: str, calls: List[Dict[str, Any]]) -> Dict[str, Any]:
    spec = {"base_url": base_url, "api_key": API_KEY, "base_model": MODEL, "calls": calls}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "TINKEX_", "PYTHON"))}
    env["TINKER_TELEMETRY"] = "1"  # exercise the telemetry route as well
    done = subprocess.run(
        [str(python), str(SIDE_SCRIPT)], input=json.dumps(spec), capture_output=True, text=True, timeout=180, env=env,
    )
    assert done.returncode == 0, f"the official SDK failed against the local server:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def _run_tinkex(base_url: str, calls: List[Dict[str, Any]]) -> Dict[str, Any]:
    results: Dict[str, Any] = {}
    with tinkex.ServiceClient(api_key=API_KEY, base_url=base_url) as service:
        client = service.create_sampling_client(base_model=MODEL)
        for call in calls:
            prompt = types.ModelInput.from_ints(call["prompt"])
            if call["method"] == "compute_logprobs":
                results[call["name"]] = client.compute_logprobs(prompt).result(timeout=60)
                continue
            response = client.sample(
                prompt, call["num_samples"], types.SamplingParams(**call["sampling_params"]),
                call.get("include_prompt_logprobs", False), call.get("topk_prompt_logprobs", 0),
            ).result(timeout=60)
            results[call["name"]] = json.loads(json.dumps(response.to_json()))
    return results


def _without_ids(result: Dict[str, Any]) -> Dict[str, Any]:
    """A sample result without its opaque sequence ids (they name different requests)."""
    sequences = [{k: v for k, v in seq.items() if k in ("tokens", "logprobs", "stop_reason")}
                 for seq in result["sequences"]]
    return {"sequences": sequences, "prompt_logprobs": result["prompt_logprobs"],
            "topk_prompt_logprobs": result["topk_prompt_logprobs"]}


@pytest.fixture(scope="module")
def both_runs(official_python: Path, compat_server: Any) -> Dict[str, Any]:
    calls = _calls()
    before = compat_server.stats()["statuses"]
    official = _run_official(official_python, compat_server.base_url, calls)
    after = compat_server.stats()["statuses"]
    delta = {key: count - before.get(key, 0) for key, count in after.items() if count != before.get(key, 0)}
    return {"official": official, "tinkex": _run_tinkex(compat_server.base_url, calls), "statuses": delta,
            "calls": calls}


def test_the_pinned_official_version_ran_cleanly(both_runs: Dict[str, Any]) -> None:
    official = both_runs["official"]
    assert official["tinker_version"] == OFFICIAL_VERSION
    assert official["warnings"] == [], "the official SDK warned while talking to the local server"
    print(f"official tinker {official['tinker_version']} ({official['client_type']}) ran in {official['seconds']}s")


def test_the_server_answered_every_official_call_with_success(both_runs: Dict[str, Any]) -> None:
    statuses = both_runs["statuses"]
    failures = {key: n for key, n in statuses.items() if not key.endswith(" 200")}
    assert failures == {}, f"the server answered the official SDK with errors: {statuses}"
    for route in ("client_config", "create_session", "create_sampling_session", "asample", "retrieve_future",
                  "finish_session", "telemetry"):
        assert statuses.get(f"{route} 200", 0) >= 1, f"the official SDK never reached {route}: {statuses}"


@pytest.mark.parametrize("name", [call["name"] for call in _calls() if call["method"] == "sample"])
def test_sample_results_match_tinkex(both_runs: Dict[str, Any], name: str) -> None:
    official, ours = both_runs["official"]["results"][name], both_runs["tinkex"][name]
    assert _without_ids(official) == _without_ids(ours)
    ids = [seq["sequence_id"] for seq in official["sequences"]]
    assert all(isinstance(i, str) and i for i in ids) and len(set(ids)) == len(ids)


def test_compute_logprobs_matches_tinkex(both_runs: Dict[str, Any]) -> None:
    official, ours = both_runs["official"]["results"]["compute_logprobs"], both_runs["tinkex"]["compute_logprobs"]
    assert official == ours
    assert official[0] is None and all(isinstance(v, float) for v in official[1:])
    assert len(official) == len(both_runs["calls"][-1]["prompt"])


def test_the_requests_exercised_stops_lengths_and_prompt_scoring(both_runs: Dict[str, Any]) -> None:
    """Guards the comparison itself: it must have covered both stop reasons and the prompt extras."""
    results = both_runs["official"]["results"]
    reasons = {seq["stop_reason"] for r in results.values() if isinstance(r, dict) for seq in r["sequences"]}
    assert reasons == {"stop", "length"}
    scored = results["prompt_logprobs_topk"]
    assert scored["prompt_logprobs"][0] is None and len(scored["prompt_logprobs"]) == len(PROMPT)
    rows = scored["topk_prompt_logprobs"]
    assert rows[0] is None and all(len(row) == 3 for row in rows[1:])
    assert all(seq["logprobs"] is not None and len(seq["logprobs"]) == len(seq["tokens"])
               for seq in results["stop_seed_3"]["sequences"])

