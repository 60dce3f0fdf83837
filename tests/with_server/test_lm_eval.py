"""The lm-evaluation-harness backend against the local server, cross-checked through the plain SDK.

The example tasks in ``examples/lm_eval`` run through ``lm_eval.simple_evaluate`` (once, for
the module) and through ``tinkex eval`` in a subprocess; every figure lm-eval reports is then
recomputed from ``compute_logprobs`` / ``sample`` calls made directly on a SamplingClient.
"""

from __future__ import annotations

import os

# datasets reads these when it is imported: set them before lm_eval (which imports it) is.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import lm_eval
import pytest
import requests
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

import tinkex
from tinkex import types
from tinkex.contrib.lm_eval import EvalRequestError, TinkexLM, close_all
from tinkex.server import LocalServer
from tinkex.server.model import DEFAULT_MODEL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "lm_eval"
TASKS = ["tinkex_python_mc", "tinkex_python_gen", "tinkex_python_docs"]
SEED = 1234
SECRET_KEY = "tml-lmeval-test-key-0123456789"
BOS = 256


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A server of its own, so the key lm-eval must never write down is one only this module uses."""
    with LocalServer(models=(DEFAULT_MODEL,), poll_hold_s=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: LocalServer) -> Iterator[tinkex.SamplingClient]:
    with tinkex.ServiceClient(api_key=SECRET_KEY, base_url=server.base_url) as service:
        yield service.create_sampling_client(base_model=DEFAULT_MODEL)


@pytest.fixture(scope="module")
def evaluated(server: LocalServer) -> Dict[str, Any]:
    """The three example tasks through simple_evaluate with the model given by name and model_args."""
    model_args = f"base_model={DEFAULT_MODEL},base_url={server.base_url},api_key={SECRET_KEY},seed={SEED}"
    try:
        results = lm_eval.simple_evaluate(
            model="tinkex", model_args=model_args, tasks=TASKS, log_samples=True,
            task_manager=TaskManager(include_path=str(EXAMPLES), include_defaults=False),
        )
    finally:  # lm-eval never closes the model it built: its session would heartbeat on into later tests
        close_all()
    assert results is not None
    return results


def _score(client: tinkex.SamplingClient, context: List[int], continuation: List[int]) -> float:
    logprobs = client.compute_logprobs(types.ModelInput.from_ints(context + continuation)).result(30)
    return sum(logprobs[len(context):])  # type: ignore[arg-type]


def _greedy(client: tinkex.SamplingClient, context: List[int], length: int) -> List[int]:
    params = types.SamplingParams(max_tokens=length, temperature=0.0, stop=[])
    return client.sample(types.ModelInput.from_ints(context), 1, params).result(30).sequences[0].tokens


def _encode(text: str) -> List[int]:
    return list(text.encode("utf-8"))


def test_multiple_choice_accuracy_equals_the_one_recomputed_from_compute_logprobs(
    evaluated: Dict[str, Any], client: tinkex.SamplingClient
) -> None:
    samples = evaluated["samples"]["tinkex_python_mc"]
    assert len(samples) == 24
    correct = []
    for sample in samples:
        doc = sample["doc"]
        scores = [_score(client, _encode(doc["question"]), _encode(" " + choice)) for choice in doc["choices"]]
        reported = [float(resp[0][0]) for resp in sample["resps"]]
        assert reported == pytest.approx(scores, abs=1e-6)
        correct.append(float(scores.index(max(scores)) == doc["answer"]))
    accuracy = sum(correct) / len(correct)
    assert 0 < accuracy < 1  # the task separates the model's right and wrong answers
    assert evaluated["results"]["tinkex_python_mc"]["acc,none"] == pytest.approx(accuracy)


def test_is_greedy_matches_greedy_generation_of_the_continuation(
    evaluated: Dict[str, Any], client: tinkex.SamplingClient
) -> None:
    for sample in evaluated["samples"]["tinkex_python_mc"][:6]:
        doc = sample["doc"]
        for choice, resp in zip(doc["choices"], sample["resps"]):
            continuation = _encode(" " + choice)
            greedy = _greedy(client, _encode(doc["question"]), len(continuation)) == continuation
            assert bool(resp[0][1]) is greedy


def test_is_greedy_is_true_for_the_models_own_greedy_continuation(
    server: LocalServer, client: tinkex.SamplingClient
) -> None:
    context = "The built-in function"
    greedy_text = bytes(_greedy(client, _encode(context), 12)).decode("utf-8", errors="replace")
    other = ("X" + greedy_text[1:]) if not greedy_text.startswith("X") else ("Y" + greedy_text[1:])
    requests = [Instance("loglikelihood", {}, (context, text), i) for i, text in enumerate([greedy_text, other])]
    with TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY) as lm:
        (greedy_score, greedy_flag), (other_score, other_flag) = lm.loglikelihood(requests, disable_tqdm=True)
    assert (greedy_flag, other_flag) == (True, False)
    assert greedy_score == pytest.approx(_score(client, _encode(context), _encode(greedy_text)), abs=1e-6)
    assert other_score < greedy_score


def test_generate_until_outputs_equal_sample_with_the_same_seed(
    evaluated: Dict[str, Any], client: tinkex.SamplingClient
) -> None:
    samples = evaluated["samples"]["tinkex_python_gen"]
    params = types.SamplingParams(max_tokens=24, seed=SEED, stop=["\n", "."], temperature=0.8)
    outputs = []
    for sample in samples:
        tokens = client.sample(types.ModelInput.from_ints(_encode(sample["doc"]["prompt"])), 1, params).result(30)
        text = bytes(t for t in tokens.sequences[0].tokens if t < 256).decode("utf-8", errors="replace")
        expected = min((text.split(stop)[0] for stop in ("\n", ".")), key=len)
        assert sample["resps"][0][0] == expected
        outputs.append(expected)
    assert any(outputs) and len(set(outputs)) > 1  # real, varied generations, not empty strings


def test_rolling_loglikelihood_equals_the_sum_of_prompt_logprobs(
    evaluated: Dict[str, Any], client: tinkex.SamplingClient
) -> None:
    samples = evaluated["samples"]["tinkex_python_docs"]
    assert len(samples) == 6
    for sample in samples:
        expected = _score(client, [BOS], _encode(sample["doc"]["text"]))
        assert float(sample["resps"][0][0]) == pytest.approx(expected, abs=1e-4)


def _expected_windows(tokens: List[int], max_length: int) -> List[Tuple[List[int], List[int]]]:
    """lm-eval's documented rolling windows, written out: every token predicted once, the first window
    after BOS, each later one after the token before it, the last one with as much context as fits."""
    size = max_length - 1
    windows = [([BOS], tokens[:size])]
    for start in range(size, len(tokens), size):
        predicted = tokens[start:start + size]
        context_length = max_length - len(predicted)
        windows.append((tokens[max(0, start - context_length):start], predicted))
    return windows


def test_rolling_loglikelihood_over_several_windows(server: LocalServer, client: tinkex.SamplingClient) -> None:
    text = " ".join(sample.strip() for sample in (EXAMPLES / "python_docs.jsonl").read_text().splitlines())
    tokens = _encode(text)
    windows = _expected_windows(tokens, 64)
    assert len(windows) > 5 and all(len(c) + len(p) <= 64 for c, p in windows)
    assert sum(len(p) for _, p in windows) == len(tokens)
    expected = sum(_score(client, context, predicted) for context, predicted in windows)
    with TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, max_length=64) as lm:
        (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert rolling == pytest.approx(expected, abs=1e-3)
    assert rolling < _score(client, [BOS], tokens)  # less context than one long window: a worse score


def test_a_failed_request_is_reported_by_index_and_the_others_still_answer(
    server: LocalServer, client: tinkex.SamplingClient
) -> None:
    too_long = "x" * 9000  # past the model's 8192-token context; max_length below lets it through
    args = [("import", " os"), ("import", too_long), ("def", " main")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(args)]
    with TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, max_length=20000) as lm:
        results = lm.loglikelihood(requests, disable_tqdm=True)
        assert [failure.index for failure in lm.failures] == [1]
        assert isinstance(lm.failures[0].error, tinkex.BadRequestError)
    assert results[1] == (-math.inf, False)
    assert results[0][0] == pytest.approx(_score(client, _encode("import"), _encode(" os")), abs=1e-6)
    assert results[2][0] == pytest.approx(_score(client, _encode("def"), _encode(" main")), abs=1e-6)
    with TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, max_length=20000,
                  on_error="raise") as lm, pytest.raises(EvalRequestError) as raised:
        lm.loglikelihood(requests, disable_tqdm=True)
    assert [failure.index for failure in raised.value.failures] == [1]


def test_bad_model_args_name_the_field(server: LocalServer) -> None:
    with pytest.raises(tinkex.ValidationError) as raised:
        TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, max_in_flight=0)
    assert (raised.value.field, raised.value.value) == ("max_in_flight", 0)
    with pytest.raises(tinkex.ValidationError) as raised:
        TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, on_error="ignore")
    assert raised.value.field == "on_error"
    with pytest.raises(tinkex.ValidationError) as raised:
        TinkexLM(base_model=DEFAULT_MODEL, base_url=server.base_url, api_key=SECRET_KEY, temprature=0.5)
    assert (raised.value.field, raised.value.value) == ("temprature", 0.5)


def test_local_true_serves_the_model_for_the_run_and_stops_it(
    server: LocalServer, client: tinkex.SamplingClient
) -> None:
    request = Instance("loglikelihood", {}, ("import", " os"), 0)
    with TinkexLM(base_model=DEFAULT_MODEL, local=True) as lm:
        ((score, _greedy_flag),) = lm.loglikelihood([request], disable_tqdm=True)
        own = lm._server  # the backend's own server, not this module's
        assert own is not None and own.base_url != server.base_url
    assert score == pytest.approx(_score(client, _encode("import"), _encode(" os")), abs=1e-6)
    with pytest.raises(requests.ConnectionError):
        requests.get(own.base_url + "/api/v1/healthz", timeout=5)


def test_tinkex_eval_runs_lm_eval_cli_and_never_writes_the_key(
    evaluated: Dict[str, Any], server: LocalServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "tinkex", "eval", "--model", "tinkex",
        "--model_args", f"base_model={DEFAULT_MODEL},base_url={server.base_url},api_key={SECRET_KEY}",
        "--tasks", "tinkex_python_mc", "--include_path", str(EXAMPLES), "--limit", "8",
        "--output_path", str(out), "--log_samples",
    ]
    env = {key: value for key, value in os.environ.items() if not key.startswith("TINKER_")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    written = [path for path in out.rglob("*") if path.is_file()]
    results = json.loads(next(path for path in written if path.name.startswith("results")).read_text())
    first = [s for s in evaluated["samples"]["tinkex_python_mc"] if s["doc_id"] < 8]
    expected = sum(s["acc"] for s in first) / len(first)
    assert results["results"]["tinkex_python_mc"]["acc,none"] == pytest.approx(expected)
    assert "tinkex_python_mc" in done.stdout  # lm-eval's own results table
    for path in written:
        assert SECRET_KEY not in path.read_text(), path
    assert SECRET_KEY not in done.stdout + done.stderr
