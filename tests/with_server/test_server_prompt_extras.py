"""The 0.38 SampleRequest extras on the wire: ``topk_sample_logprobs``, ``prompt_logprobs_last_n``,
``target_prompt_logprobs`` and ``prompt_alt_tokens_k``, answered by the n-gram model with real
values and checked against what the same server scores for the same text (the
``compute_logprobs`` request: ``prompt_logprobs`` / ``topk_prompt_logprobs`` on the prompt).

Raw HTTP only (legacy JSON results, which carry every field), plus the protobuf fields 5 and 6.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Optional

import pytest

from tinkex.server import LocalServer
from tinkex.server.models import DEFAULT_MODEL

from .conftest import RawApi, sample_body

PROMPT = list(b"The sampling client ")


@pytest.fixture
def api(local_server: LocalServer) -> RawApi:
    return RawApi(local_server)


def _result(api: RawApi, sampler: str, seq_id: int, tokens: List[int], **fields: Any) -> Dict[str, Any]:
    promise = api.asample(sample_body(sampler, seq_id, tokens, **fields))
    assert promise.status_code == 200, promise.text
    answer = api.result(promise.json()["request_id"], protobuf=False)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "error" not in body, body
    return body


def _scored(api: RawApi, sampler: str, seq_id: int, tokens: List[int], topk: int = 0) -> Dict[str, Any]:
    """What compute_logprobs asks: the prompt scored, one token generated."""
    return _result(api, sampler, seq_id, tokens, prompt_logprobs=True, topk_prompt_logprobs=topk,
                   sampling_params={"max_tokens": 1})  # fmt: skip


def test_topk_sample_logprobs_are_the_scores_of_the_completed_text(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    result = _result(api, sampler, 0, PROMPT, topk_sample_logprobs=3, sampling_params={"max_tokens": 6})
    (sequence,) = result["sequences"]
    text = PROMPT + sequence["tokens"]
    scored = _scored(api, sampler, 1, text, topk=3)
    for i, row in enumerate(sequence["topk_logprobs"]):
        assert row == scored["topk_prompt_logprobs"][len(PROMPT) + i]
        assert sequence["logprobs"][i] == scored["prompt_logprobs"][len(PROMPT) + i]
    assert len(sequence["topk_logprobs"]) == len(sequence["tokens"]) == 6


def test_prompt_logprobs_last_n_scores_only_the_suffix_in_both_tables(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    full = _scored(api, sampler, 0, PROMPT, topk=2)
    last = _result(api, sampler, 1, PROMPT, prompt_logprobs=True, topk_prompt_logprobs=2, prompt_logprobs_last_n=3,
                   sampling_params={"max_tokens": 1})  # fmt: skip
    cut = len(PROMPT) - 3
    assert last["prompt_logprobs"] == [None] * cut + full["prompt_logprobs"][cut:]
    assert last["topk_prompt_logprobs"] == [None] * cut + full["topk_prompt_logprobs"][cut:]


@pytest.mark.parametrize("fields, named", [
    ({"prompt_logprobs": True, "prompt_logprobs_last_n": 0}, "prompt_logprobs_last_n=0"),
    ({"prompt_logprobs": True, "prompt_logprobs_last_n": len(PROMPT)}, f"prompt_logprobs_last_n={len(PROMPT)}"),
    ({"prompt_logprobs_last_n": 2}, "requires prompt_logprobs"),
    ({"prompt_alt_tokens_k": 1000}, "prompt_alt_tokens_k=1000"),
    ({"target_prompt_logprobs": {"data": [1], "dtype": "int64", "shape": [1, 1]}}, "target_prompt_logprobs"),
    ({"target_prompt_logprobs": {"data": [0.5] * (len(PROMPT) - 1), "dtype": "float32",
                                 "shape": [len(PROMPT) - 1, 1]}}, "int64"),
    ({"target_prompt_logprobs": {"data": [999] * (len(PROMPT) - 1), "dtype": "int64",
                                 "shape": [len(PROMPT) - 1, 1]}}, "999"),
    ({"target_prompt_logprobs": {"data": [-1] * (len(PROMPT) - 1), "dtype": "int64",
                                 "shape": [len(PROMPT) - 1, 1]}}, "names no token id"),
])  # fmt: skip
def test_bad_extras_get_400_naming_the_field(api: RawApi, fields: Dict[str, Any], named: str) -> None:
    answer = api.asample(sample_body(api.sampler(DEFAULT_MODEL), 0, PROMPT, **fields))
    assert answer.status_code == 400 and named in answer.json()["detail"], answer.text


def _targets(api: RawApi, sampler: str) -> List[List[int]]:
    """Per prompt position after the first: the real next token, the model's favourite, and -1."""
    top1 = _scored(api, sampler, 90, PROMPT, topk=1)["topk_prompt_logprobs"]
    return [[PROMPT[i + 1], top1[i + 1][0][0], -1] for i in range(len(PROMPT) - 1)]


def test_target_prompt_logprobs_dense(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    targets = _targets(api, sampler)
    scored = _scored(api, sampler, 0, PROMPT, topk=1)
    tensor = {"data": [t for row in targets for t in row], "dtype": "int64", "shape": [len(targets), 3]}
    result = _result(api, sampler, 1, PROMPT, target_prompt_logprobs=tensor)
    answer = result["target_prompt_logprobs"]
    assert answer["dtype"] == "float32" and answer["shape"] == [len(targets), 3]
    rows = [answer["data"][3 * i : 3 * i + 3] for i in range(len(targets))]
    for i, (real, favourite, nothing) in enumerate(rows):
        assert real == scored["prompt_logprobs"][i + 1]  # the real token: its prompt logprob
        assert favourite == scored["topk_prompt_logprobs"][i + 1][0][1]  # the top-1 token: its top-k score
        assert nothing == 0.0  # -1 asked nothing


def test_target_prompt_logprobs_sparse_keeps_the_layout(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    scored = _scored(api, sampler, 0, PROMPT)
    rows = len(PROMPT) - 1
    listed = list(range(0, rows, 3))  # one cell in every third row, column 1 of 2
    tensor = {"data": [PROMPT[r + 1] for r in listed], "dtype": "int64", "shape": [rows, 2],
              "sparse_crow_indices": [sum(1 for r in listed if r < row) for row in range(rows + 1)],
              "sparse_col_indices": [1] * len(listed)}  # fmt: skip
    answer = _result(api, sampler, 1, PROMPT, target_prompt_logprobs=tensor)["target_prompt_logprobs"]
    assert answer["sparse_crow_indices"] == tensor["sparse_crow_indices"]
    assert answer["sparse_col_indices"] == tensor["sparse_col_indices"] and answer["shape"] == [rows, 2]
    assert answer["data"] == [scored["prompt_logprobs"][r + 1] for r in listed]


def _alternatives(api: RawApi, sampler: str, seq_id: int, k: int, **params: Any) -> Dict[str, Any]:
    params = {"max_tokens": 1, "seed": 11, **params}
    return _result(api, sampler, seq_id, PROMPT, prompt_alt_tokens_k=k, sampling_params=params)["prompt_alt_tokens"]


def test_prompt_alt_tokens_are_seeded_draws_scored_by_the_model(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    alt = _alternatives(api, sampler, 0, 4)
    rows = len(PROMPT) - 1
    assert alt["tokens"]["shape"] == alt["logprobs"]["shape"] == [rows, 4]
    assert alt["tokens"]["dtype"] == "int64" and alt["logprobs"]["dtype"] == "float32"
    assert _alternatives(api, sampler, 1, 4) == alt  # same seed, same draws
    assert _alternatives(api, sampler, 2, 4, seed=12) != alt
    drawn = alt["tokens"]["data"]
    assert len(set(drawn)) > 4  # draws, not one token repeated
    tensor = {"data": drawn, "dtype": "int64", "shape": [rows, 4]}
    check = _result(api, sampler, 3, PROMPT, target_prompt_logprobs=tensor)["target_prompt_logprobs"]
    assert check["data"] == alt["logprobs"]["data"]  # each draw's logprob is the model's score for it


def test_prompt_alt_tokens_at_temperature_zero_are_the_argmax(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    top1 = _scored(api, sampler, 0, PROMPT, topk=1)["topk_prompt_logprobs"]
    alt = _alternatives(api, sampler, 1, 2, temperature=0.0)
    assert alt["tokens"]["data"] == [top1[i + 1][0][0] for i in range(len(PROMPT) - 1) for _ in range(2)]


# protobuf fields 5 and 6 ------------------------------------------------------------------------


def _fields(data: bytes) -> Dict[int, List[Any]]:
    """A minimal protobuf walker for the checks below (varint and length-delimited fields)."""
    out: Dict[int, List[Any]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        else:
            assert wire == 2, wire
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        out.setdefault(number, []).append(value)
    return out


def _read_varint(data: bytes, pos: int) -> Any:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _tensor(message: bytes) -> Dict[str, Any]:
    fields = _fields(message)
    dtype = {1: "f", 2: "q"}[fields[3][0]]
    shape_bytes = fields[4][0]
    shape, pos = [], 0
    while pos < len(shape_bytes):
        size, pos = _read_varint(shape_bytes, pos)
        shape.append(size)
    dense = fields[1][0]
    return {"data": list(struct.unpack(f"<{len(dense) // struct.calcsize(dtype)}{dtype}", dense)), "shape": shape}


def test_protobuf_answer_carries_fields_5_and_6(api: RawApi) -> None:
    sampler = api.sampler(DEFAULT_MODEL)
    rows = len(PROMPT) - 1
    tensor = {"data": [PROMPT[i + 1] for i in range(rows)], "dtype": "int64", "shape": [rows, 1]}
    fields = {"target_prompt_logprobs": tensor, "prompt_alt_tokens_k": 2,
              "sampling_params": {"max_tokens": 1, "seed": 3}}  # fmt: skip
    as_json = _result(api, sampler, 0, PROMPT, **fields)
    promise = api.asample(sample_body(sampler, 1, PROMPT, **fields)).json()
    proto = _fields(api.result(promise["request_id"]).content)
    target = _tensor(proto[5][0])
    assert target["shape"] == as_json["target_prompt_logprobs"]["shape"]
    assert target["data"] == as_json["target_prompt_logprobs"]["data"]  # float32 on both sides
    alt = _fields(proto[6][0])
    assert _tensor(alt[1][0])["data"] == as_json["prompt_alt_tokens"]["tokens"]["data"]
    assert _tensor(alt[2][0])["data"] == as_json["prompt_alt_tokens"]["logprobs"]["data"]


def test_the_echo_model_answers_the_extras_too(local_server: LocalServer) -> None:
    api = RawApi(local_server)
    sampler = api.sampler()
    tensor = {"data": [1, -1], "dtype": "int64", "shape": [1, 2]}
    result = _result(api, sampler, 0, [5, 6], target_prompt_logprobs=tensor, prompt_alt_tokens_k=3,
                     prompt_logprobs=True, prompt_logprobs_last_n=1)  # fmt: skip
    uniform: Optional[float] = result["prompt_logprobs"][1]
    assert result["target_prompt_logprobs"]["data"] == [uniform, 0.0]
    assert result["prompt_alt_tokens"]["logprobs"]["data"] == [uniform] * 3
