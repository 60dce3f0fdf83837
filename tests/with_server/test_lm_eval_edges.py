"""The lm-eval backend's edges: model_args checks, tokenizers without BOS/EOS, context lengths the
server does not give, answers without the logprobs asked for, failed requests of every type, and
closing. Scores are cross-checked through ``compute_logprobs`` on the shared local server; a
scripted Tinker service stands in for servers that answer in ways the local one never does."""

from __future__ import annotations

import os

# datasets (imported with lm_eval) reads these once: whichever lm-eval test module comes first sets them.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import gc
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import pytest
from lm_eval.api.instance import Instance

import tinkex
from tests.fake_tinker import KEY, FakeTinker, json_answer, result_answer
from tests.unit.test_tokenizers import byte_level_bpe
from tinkex import types
from tinkex.contrib.lm_eval import TinkexLM, close_all
from tinkex.errors import DecodeError, ValidationError
from tinkex.server import LocalServer
from tinkex.server.models import ECHO_MODEL

RETRIEVE = "/api/v1/retrieve_future"
CAPABILITIES = "/api/v1/get_server_capabilities"


@pytest.fixture(scope="module")
def client(local_server: LocalServer) -> Iterator[tinkex.SamplingClient]:
    with tinkex.ServiceClient(api_key=local_server.api_key, base_url=local_server.base_url) as service:
        yield service.create_sampling_client(base_model=ECHO_MODEL)


def echo_lm(server: LocalServer, **model_args: Any) -> TinkexLM:
    return TinkexLM(base_model=ECHO_MODEL, base_url=server.base_url, api_key=server.api_key, **model_args)


def score(client: tinkex.SamplingClient, tokens: List[int], scored: int) -> float:
    logprobs = client.compute_logprobs(types.ModelInput.from_ints(tokens)).result(30)
    return sum(logprobs[len(tokens) - scored:])  # type: ignore[arg-type]


def encode(text: str) -> List[int]:
    return list(text.encode("utf-8"))


# -- model_args ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_args, field", [
    ({"timeout": "30"}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": True}, "timeout"),
    ({"timeout": math.inf}, "timeout"),
    ({"seed": "7"}, "seed"),
    ({"seed": False}, "seed"),
    ({"max_gen_toks": 0}, "max_gen_toks"),
    ({"local": True}, "base_model"),  # nothing to serve
])
def test_bad_model_args_are_refused_before_anything_is_sent(model_args: Dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TinkexLM(base_url="http://127.0.0.1:9", api_key=KEY, **model_args)  # nothing listens on port 9
    assert raised.value.field == field


def test_a_bad_max_length_is_refused_once_connected(local_server: LocalServer) -> None:
    with pytest.raises(ValidationError) as raised:
        echo_lm(local_server, max_length=0)
    assert raised.value.field == "max_length"


def test_timeout_and_seed_reach_the_generation_requests(local_server: LocalServer,
                                                        client: tinkex.SamplingClient) -> None:
    request = Instance("generate_until", {}, ("Hello there", {"until": [], "max_gen_toks": 6, "temperature": 1.0}), 0)
    with echo_lm(local_server, timeout=30, seed=11) as lm:
        first, = lm.generate_until([request], disable_tqdm=True)
        again, = lm.generate_until([request], disable_tqdm=True)
    params = types.SamplingParams(max_tokens=6, seed=11, temperature=1.0)
    expected = client.sample(types.ModelInput.from_ints(encode("Hello there")), 1, params).result(30)
    assert first == again == bytes(t for t in expected.sequences[0].tokens if t < 256).decode("utf-8", "replace")


# -- tokenizers ------------------------------------------------------------------------------------


def tokenizer_file(directory: Path, **special: str) -> str:
    """A byte-level BPE tokenizer.json with only the special tokens named in ``special``."""
    path = byte_level_bpe(directory / "tokenizer.json", with_config=False)
    if special:
        (directory / "tokenizer_config.json").write_text(json.dumps(special))
    return str(path)


def test_a_tokenizer_without_bos_or_eos_is_refused_by_name(local_server: LocalServer, tmp_path: Path) -> None:
    path = tokenizer_file(tmp_path)
    with pytest.raises(ValidationError) as raised:
        echo_lm(local_server, tokenizer=path)
    assert raised.value.field == "tokenizer" and "neither a BOS nor an EOS" in str(raised.value)


def test_the_missing_one_of_bos_and_eos_stands_in_for_the_other(local_server: LocalServer, tmp_path: Path) -> None:
    with echo_lm(local_server, tokenizer=tokenizer_file(tmp_path / "bos", bos_token="<s>")) as lm:
        assert lm.prefix_token_id == lm.eot_token_id == lm.tinkex_tokenizer.bos_token_id == 0
    with echo_lm(local_server, tokenizer=tokenizer_file(tmp_path / "eos", eos_token="</s>")) as lm:
        assert lm.prefix_token_id == lm.eot_token_id == lm.tinkex_tokenizer.eos_token_id == 1
    with echo_lm(local_server) as lm:
        assert (lm.prefix_token_id, lm.eot_token_id, lm.tokenizer_name) == (256, 257, "tinkex/byte")


def test_hugging_face_tokenizers_get_add_special_tokens(local_server: LocalServer, tmp_path: Path) -> None:
    path = byte_level_bpe(tmp_path / "tokenizer.json")  # its post-processor puts <s> (id 0) first
    with echo_lm(local_server, tokenizer=str(path)) as lm:
        plain = lm.tok_encode("def main", add_special_tokens=False)
        assert lm.tok_encode("def main", add_special_tokens=True) == [0] + plain
        assert lm.tok_encode("def main") == [0] + plain  # the file's default
        assert lm.tok_decode(plain) == "def main"
    with echo_lm(local_server) as lm:  # the byte tokenizer has no special tokens to add
        assert lm.tok_encode("ab", add_special_tokens=True) == [97, 98] and lm.tok_decode([97, 98]) == "ab"


# -- context length --------------------------------------------------------------------------------


def test_the_context_length_comes_from_the_server(local_server: LocalServer) -> None:
    with echo_lm(local_server) as lm:
        assert lm.max_length == 8192
    with echo_lm(local_server, max_length=100) as lm:
        assert lm.max_length == 100


@pytest.mark.parametrize("answer, level, says", [
    (json_answer(400, {"detail": "no such route"}), logging.WARNING, "cannot read the context length"),
    (json_answer(200, {"supported_models": [{"model_name": "other", "max_context_length": 100},
                                            {"model_name": "m"}]}),
     logging.INFO, "does not say the context length"),
])
def test_without_a_context_length_from_the_server_2048_is_used(answer: Any, level: int, says: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tinkex.contrib.lm_eval")
    with FakeTinker() as fake:
        fake.always(CAPABILITIES, answer)
        with TinkexLM(base_model="m", base_url=fake.base_url, api_key=KEY, tokenizer="tinkex/byte") as lm:
            assert lm.max_length == 2048
    logged = [r for r in caplog.records if r.name == "tinkex.contrib.lm_eval"]
    assert [(r.levelno, says in r.getMessage()) for r in logged] == [(level, True)]


# -- answers and failures --------------------------------------------------------------------------


def test_a_context_longer_than_max_length_is_cut_from_the_left(local_server: LocalServer,
                                                               client: tinkex.SamplingClient) -> None:
    context, continuation = encode("import os, sys, json"), encode(" ok")
    with echo_lm(local_server, max_length=8) as lm:
        ((short, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("import os, sys, json", " ok"), 0)],
                                         disable_tqdm=True)
        ((cut, _),) = lm.loglikelihood([Instance("loglikelihood", {}, ("x", "0123456789"), 0)], disable_tqdm=True)
    assert short == pytest.approx(score(client, (context + continuation)[-8:], 3), abs=1e-6)
    assert cut == pytest.approx(score(client, encode("x0123456789")[-8:], 7), abs=1e-6)  # all but the first kept


def scripted_loglikelihood(answers: List[Any], pairs: List[Any]) -> Any:
    with FakeTinker() as fake:
        fake.always(CAPABILITIES, json_answer(200, {"supported_models": [{"model_name": "m",
                                                                          "max_context_length": 64}]}))
        fake.queue(RETRIEVE, *answers)
        with TinkexLM(base_model="m", base_url=fake.base_url, api_key=KEY, tokenizer="tinkex/byte",
                      max_in_flight=1) as lm:
            results = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)],
                                       disable_tqdm=True)
            return results, lm.failures


def test_answers_without_the_logprobs_asked_for_are_failures_not_scores() -> None:
    results, failures = scripted_loglikelihood(
        [result_answer([7], prompt_logprobs=[None, -1.0]),  # "ab" + "c" is 3 tokens: one logprob short
         result_answer([7], prompt_logprobs=[None, -1.0, None]),  # the continuation's own logprob missing
         result_answer([7], prompt_logprobs=[None, -1.0, -2.5])],  # no top-1 rows: not greedy
        [("ab", "c"), ("ab", "c"), ("ab", "c")],
    )
    assert results == [(-math.inf, False), (-math.inf, False), (-2.5, False)]
    assert [(f.kind, f.index, type(f.error)) for f in failures] == [("loglikelihood", 0, DecodeError),
                                                                   ("loglikelihood", 1, DecodeError)]
    assert "expected 3 prompt logprobs, got 2" in str(failures[0].error)
    assert "no prompt logprob at position 2" in str(failures[1].error)


def test_failed_rolling_and_generation_requests_score_as_failures(local_server: LocalServer,
                                                                  client: tinkex.SamplingClient) -> None:
    too_long = "x" * 9000  # past the model's 8192-token context; max_length below lets it through
    rolling = [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(["import os", too_long])]
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 4}
    generate = [Instance("generate_until", {}, (text, dict(gen_kwargs)), i)
                for i, text in enumerate([too_long, "import os"])]
    with echo_lm(local_server, max_length=20000) as lm:
        totals = lm.loglikelihood_rolling(rolling, disable_tqdm=True)
        texts = lm.generate_until(generate, disable_tqdm=True)
        failures = [(f.kind, f.index) for f in lm.failures]
    assert failures == [("loglikelihood_rolling", 1), ("generate_until", 0)]
    assert totals[0] == pytest.approx(score(client, [256] + encode("import os"), 9), abs=1e-6)
    assert totals[1] == -math.inf
    assert texts[0] == "" and texts[1]


def test_generation_kwargs_without_a_tinker_equivalent_are_logged_and_ignored(
    local_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tinkex.contrib.lm_eval")
    gen_kwargs = {"until": ["\n"], "max_gen_toks": 4, "repetition_penalty": 1.2}
    with echo_lm(local_server) as lm:
        (text,) = lm.generate_until([Instance("generate_until", {}, ("abc", gen_kwargs), 0)], disable_tqdm=True)
    assert text == "abca"  # echo repeats the prompt
    assert any("['repetition_penalty']" in r.getMessage() for r in caplog.records)


def test_max_gen_toks_must_leave_room_for_a_prompt(local_server: LocalServer) -> None:
    request = Instance("generate_until", {}, ("abc", {"until": [], "max_gen_toks": 64}), 0)
    with echo_lm(local_server, max_length=64) as lm, pytest.raises(ValidationError) as raised:
        lm.generate_until([request], disable_tqdm=True)
    assert raised.value.field == "max_gen_toks" and "max_length 64" in str(raised.value)


# -- closing ---------------------------------------------------------------------------------------


def test_close_all_closes_every_open_model_once(local_server: LocalServer) -> None:
    request = Instance("loglikelihood", {}, ("import", " os"), 0)
    first, second = echo_lm(local_server), echo_lm(local_server)
    close_all()
    for lm in (first, second):
        assert lm.loglikelihood([request], disable_tqdm=True) == [(-math.inf, False)]  # its client is closed
        assert isinstance(lm.failures[0].error, tinkex.TinkexError)
        lm.close()  # again: nothing left to do
        with lm:
            pass
    close_all()  # none left open


def test_close_all_closes_a_model_that_lm_eval_has_already_dropped(fresh_server: Callable[..., LocalServer]) -> None:
    # lm_eval.simple_evaluate builds the model from model_args and drops it before returning; its session
    # must still end when `tinkex eval` (or the caller) calls close_all afterwards.
    server = fresh_server()
    lm = echo_lm(server)
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("a", "b"), 0)], disable_tqdm=True)[0][0] < 0
    del lm
    gc.collect()
    assert server.stats()["sessions_finished"] == 0
    close_all()
    assert server.stats()["sessions_finished"] == 1
