"""Drop-in pieces that need no server (issue 13 items 1 and 2, issue 14 item 14).

The awaitable futures are driven by a thread that completes them when told (an Event), never by
sleeping; a ServiceClient sends nothing until it is used, so its arguments are checked offline.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from typing import Any, Callable, Iterator, List

import pytest

import tinkex
from tinkex import types
from tinkex._sampling.future import APIFuture, SampleFuture
from tinkex._sampling.pickling import decode_handle, encode_handle
from tinkex._sampling.request import Extras, build_request, check_answer
from tinkex.errors import APIError, RequestFailedError, TinkexError, ValidationError

KEY = "tml-dropin-secret-key"
PROMPT = types.ModelInput.from_ints([1, 2, 3, 4, 5])
PARAMS = types.SamplingParams(max_tokens=2)


# --- names -----------------------------------------------------------------------------------


def test_tinker_error_is_the_tinkex_root_under_both_names() -> None:
    assert tinkex.TinkerError is tinkex.TinkexError is TinkexError
    with pytest.raises(tinkex.TinkerError):
        raise RequestFailedError("failed", category="user")
    assert isinstance(ValidationError("x", field="f"), tinkex.TinkerError)
    assert tinkex.APIResponseValidationError is tinkex.DecodeError


def test_the_official_top_level_sampling_names_are_the_tinkex_types() -> None:
    for name in ("ModelInput", "ModelInputChunk", "EncodedTextChunk", "SamplingParams", "SampleRequest",
                 "SampleResponse", "SampledSequence", "StopReason", "TensorData", "TensorDtype"):
        assert getattr(tinkex, name) is getattr(types, name), name
        assert name in tinkex.__all__
    assert tinkex.__title__ == "tinkex"


# --- awaitable futures -----------------------------------------------------------------------


@pytest.fixture
def completer() -> Iterator[Callable[[Callable[[], Any]], threading.Event]]:
    """Run ``action`` on another thread once the returned Event is set (as a pool worker would)."""
    threads = []

    def start(action: Callable[[], Any]) -> threading.Event:
        go = threading.Event()
        thread = threading.Thread(target=lambda: (go.wait(10), action()))
        thread.start()
        threads.append(thread)
        return go

    yield start
    for thread in threads:
        thread.join(10)


def test_a_future_completed_by_another_thread_is_awaited_in_the_callers_loop(completer: Any) -> None:
    future: SampleFuture[str] = SampleFuture()
    go = completer(lambda: future.set_result("done"))

    async def main() -> Any:
        go.set()
        return await future, await future.result_async(), await future.coroutine()

    assert asyncio.run(main()) == ("done", "done", "done")
    assert future.future() is future and future.result() == "done"


def test_awaiting_raises_the_calls_error(completer: Any) -> None:
    future: SampleFuture[str] = SampleFuture()
    go = completer(lambda: future.set_exception(RequestFailedError("boom", category="server")))

    async def main() -> None:
        go.set()
        await future

    with pytest.raises(RequestFailedError, match="boom"):
        asyncio.run(main())


def test_result_async_timeout_raises_timeout_error_and_cancels_nothing() -> None:
    future: SampleFuture[int] = SampleFuture()

    async def main() -> None:
        with pytest.raises(TimeoutError, match="no result within 0.01 s"):
            await future.result_async(timeout=0.01)

    asyncio.run(main())
    assert not future.cancelled() and not future.cancel_event.is_set()
    future.set_result(3)
    assert future.result() == 3


def test_cancelling_the_awaiting_task_cancels_the_call() -> None:
    future: SampleFuture[int] = SampleFuture()

    async def main() -> None:
        task = asyncio.ensure_future(future.result_async())
        await asyncio.sleep(0)  # let the task start waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert future.cancelled() and future.cancel_event.is_set()


def test_awaiting_starts_no_thread_and_no_loop_of_tinkex(completer: Any) -> None:
    futures: List[SampleFuture[int]] = [SampleFuture() for _ in range(3)]

    def complete() -> None:
        for i, future in enumerate(futures):
            future.set_result(i)

    go = completer(complete)
    before = {thread.ident for thread in threading.enumerate()}

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        go.set()
        results = await asyncio.gather(*futures)
        return results, loop

    results, loop = asyncio.run(main())
    assert results == [0, 1, 2]
    assert {thread.ident for thread in threading.enumerate()} <= before  # only the completer ran, and ended
    assert loop.is_closed()


def test_the_generic_api_future_is_a_concurrent_future() -> None:
    from concurrent.futures import Future, wait

    future: APIFuture[int] = APIFuture()
    assert isinstance(future, Future)
    future.set_result(1)
    assert wait([future], timeout=0).done == {future}


# --- ServiceClient in the official order -----------------------------------------------------


def test_the_old_positional_api_key_is_rejected_without_showing_it() -> None:
    with pytest.raises(ValidationError) as caught:
        tinkex.ServiceClient(KEY, "http://127.0.0.1:9")  # type: ignore[arg-type]
    assert caught.value.field == "user_metadata" and caught.value.value == "str"
    assert "api_key=" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(caught.value.__dict__)


def test_official_positional_and_keyword_arguments_reach_the_config() -> None:
    service = tinkex.ServiceClient(
        {"experiment": "x"}, "project-7", display_name="my run", base_url="http://127.0.0.1:9", api_key=KEY,
        default_headers_overrides={"X-A": "override", "X-C": "3"}, default_headers={"X-A": "tinkex", "X-B": "2"},
        max_retries=0,
    )
    config = service.config
    assert (config.user_metadata, config.project_id, config.display_name) == ({"experiment": "x"}, "project-7",
                                                                              "my run")
    assert config.default_headers == {"X-A": "override", "X-B": "2", "X-C": "3"}
    assert config.max_retries == 0
    closed = service.close("success")
    assert closed.done() and closed.result() is None
    assert service.close().result() is None  # idempotent


def test_unknown_keywords_are_warned_about_and_ignored() -> None:
    with pytest.warns(FutureWarning, match="ignores unsupported arguments: colour, shape"):
        service = tinkex.ServiceClient(api_key=KEY, base_url="http://127.0.0.1:9", shape=1, colour="red")
    assert service.config.api_key == KEY
    service.close()


@pytest.mark.parametrize("kwargs, field", [({"project_id": 7}, "project_id"),
                                           ({"display_name": ["x"]}, "display_name")])
def test_bad_official_arguments_name_the_field(kwargs: Any, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        tinkex.ServiceClient(api_key=KEY, **kwargs)
    assert caught.value.field == field


def test_sample_takes_the_official_signature() -> None:
    parameters = inspect.signature(tinkex.SamplingClient.sample).parameters
    assert list(parameters)[1:11] == [
        "prompt", "num_samples", "sampling_params", "include_prompt_logprobs", "topk_prompt_logprobs",
        "topk_sample_logprobs", "target_prompt_logprobs", "prompt_alt_tokens_k", "prompt_logprobs_last_n", "timeout"]
    for name in ("prompt", "num_samples", "sampling_params"):
        assert parameters[name].default is inspect.Parameter.empty, name
    assert list(inspect.signature(tinkex.SamplingClient.compute_logprobs).parameters)[1:3] == [
        "prompt", "prompt_logprobs_last_n"]
    for name in ("sample_async", "compute_logprobs_async", "get_base_model_async"):
        assert inspect.iscoroutinefunction(getattr(tinkex.SamplingClient, name)), name
    assert inspect.iscoroutinefunction(tinkex.ServiceClient.get_server_capabilities_async)
    for method in (tinkex.ServiceClient.create_sampling_client, tinkex.ServiceClient.create_sampling_client_async):
        assert list(inspect.signature(method).parameters)[1:5] == [
            "model_path", "base_model", "retry_config", "record_stability_info"]
    service = list(inspect.signature(tinkex.ServiceClient).parameters.values())
    assert [(p.name, p.kind.name) for p in service[:2]] == [("user_metadata", "POSITIONAL_OR_KEYWORD"),
                                                            ("project_id", "POSITIONAL_OR_KEYWORD")]


# --- the 0.38 extras -------------------------------------------------------------------------


def _targets(rows: int = 4, k: int = 1, dtype: str = "int64") -> types.TensorData:
    return types.TensorData(data=[7] * (rows * k), dtype=dtype, shape=[rows, k])


def test_the_extras_reach_the_request_body() -> None:
    extras = Extras(include_prompt_logprobs=True, topk_sample_logprobs=3, target_prompt_logprobs=_targets(),
                    prompt_alt_tokens_k=2, prompt_logprobs_last_n=3, record_stability_info=True)
    body = build_request(PROMPT, PARAMS, 2, extras).to_json()
    assert body["topk_sample_logprobs"] == 3 and body["prompt_alt_tokens_k"] == 2
    assert body["prompt_logprobs_last_n"] == 3 and body["record_stability_info"] is True
    assert body["target_prompt_logprobs"] == {"data": [7, 7, 7, 7], "dtype": "int64", "shape": [4, 1]}


@pytest.mark.parametrize("extras, field", [
    (Extras(topk_sample_logprobs=-1), "topk_sample_logprobs"),
    (Extras(topk_sample_logprobs=True), "topk_sample_logprobs"),
    (Extras(prompt_alt_tokens_k=1.5), "prompt_alt_tokens_k"),
    (Extras(prompt_logprobs_last_n=2), "prompt_logprobs_last_n"),  # needs include_prompt_logprobs
    (Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=0), "prompt_logprobs_last_n"),
    (Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=5), "prompt_logprobs_last_n"),  # > len - 1
    (Extras(target_prompt_logprobs=[[1]]), "target_prompt_logprobs"),
    (Extras(target_prompt_logprobs=_targets(dtype="float32")), "target_prompt_logprobs"),
    (Extras(target_prompt_logprobs=types.TensorData(data=[1, 2], dtype="int64", shape=[2])), "target_prompt_logprobs"),
    (Extras(target_prompt_logprobs=_targets(rows=3)), "target_prompt_logprobs"),
    (Extras(target_prompt_logprobs=types.TensorData(data=[1], dtype="int64", shape=[4, 1])), "target_prompt_logprobs"),
    (Extras(include_prompt_logprobs=1), "include_prompt_logprobs"),
])
def test_bad_extras_are_a_validation_error_naming_the_field(extras: Extras, field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build_request(PROMPT, PARAMS, 1, extras)
    assert caught.value.field == field


def test_a_server_that_ignores_an_extra_fails_the_call() -> None:
    sequences = [types.SampledSequence(tokens=[1])]
    alt = build_request(PROMPT, PARAMS, 1, Extras(prompt_alt_tokens_k=2))
    with pytest.raises(APIError, match="prompt_alt_tokens_k=2 was requested"):
        check_answer(types.SampleResponse(sequences=sequences), alt)
    target = build_request(PROMPT, PARAMS, 1, Extras(target_prompt_logprobs=_targets()))
    with pytest.raises(APIError, match="target_prompt_logprobs was requested"):
        check_answer(types.SampleResponse(sequences=sequences), target)
    last_n = build_request(PROMPT, PARAMS, 1, Extras(include_prompt_logprobs=True, prompt_logprobs_last_n=2))
    with pytest.raises(APIError, match="prompt_logprobs_last_n=2"):
        check_answer(types.SampleResponse(sequences=sequences, prompt_logprobs=[None, -1.0, -1.0, -1.0, -1.0]), last_n)
    honoured = types.SampleResponse(sequences=sequences, prompt_logprobs=[None, None, None, -1.0, -2.0])
    assert check_answer(honoured, last_n) is honoured


# --- numpy views and tensors -----------------------------------------------------------------


def test_numpy_views_have_the_official_dtypes_and_fill_values() -> None:
    np = pytest.importorskip("numpy")
    seq = types.SampledSequence(tokens=[5, 6], logprobs=[-0.5, -1.0], topk_logprobs=[[(5, -0.5), (9, -2.0)], None])
    assert seq.tokens_np.dtype == np.int32 and seq.tokens_np.tolist() == [5, 6]
    assert seq.logprobs_np.dtype == np.float32 and seq.logprobs_np.tolist() == [-0.5, -1.0]
    topk = seq.topk_logprobs_np
    assert topk is not None and topk.token_ids.tolist() == [[5, 9], [0, 0]]
    assert topk.logprobs.tolist() == [[-0.5, -2.0], [-99999.0, -99999.0]]
    response = types.SampleResponse(sequences=[seq], prompt_logprobs=[None, -0.25])
    values = response.prompt_logprobs_np
    assert values.dtype == np.float32 and math.isnan(values[0]) and values[1] == -0.25
    assert response.topk_prompt_logprobs_np is None and types.SampledSequence(tokens=[]).logprobs_np is None


def test_tensor_data_converts_to_nested_lists_and_numpy() -> None:
    np = pytest.importorskip("numpy")
    dense = types.TensorData(data=[1, 2, 3, 4, 5, 6], dtype="int64", shape=[2, 3])
    sparse = types.TensorData(data=[1.5], dtype="float32", shape=[2, 2], sparse_crow_indices=[0, 0, 1],
                              sparse_col_indices=[1])
    assert dense.tolist() == [[1, 2, 3], [4, 5, 6]] and sparse.tolist() == [[0, 0], [0, 1.5]]
    assert dense.to_numpy().shape == (2, 3) and sparse.to_numpy().tolist() == [[0.0, 0.0], [0.0, 1.5]]
    back = types.TensorData.from_numpy(np.arange(4, dtype=np.int32).reshape(2, 2))
    assert back == types.TensorData(data=[0, 1, 2, 3], dtype="int64", shape=[2, 2])
    assert types.TensorData.from_numpy(np.ones(2, dtype=np.float64)).dtype == "float32"


# --- sampler handles -------------------------------------------------------------------------


def test_a_sampler_handle_round_trips_without_the_key() -> None:
    payload = {"base_url": "http://x", "api_key": KEY, "sampling_session_id": "s:sample:0",
               "config": {"tags": ("a",), "timeout": 5.0}}
    handle = encode_handle(payload)
    assert KEY not in handle and handle.isascii()
    decoded = decode_handle(handle)
    assert decoded["api_key"] is None and decoded["config"]["tags"] == ("a",)
    for bad in ("not a handle", encode_handle({"config": {}})[:-4], 17):
        with pytest.raises(ValidationError) as caught:
            tinkex.SamplingClient.from_sampler_handle(bad)  # type: ignore[arg-type]
        assert caught.value.field == "handle"


# --- reprs -----------------------------------------------------------------------------------


def test_reprs_say_what_a_tokenizer_and_telemetry_hold() -> None:
    from tinkex.tokenizers import get_tokenizer

    assert repr(get_tokenizer("tinkex/byte")) == "<ByteTokenizer 'tinkex/byte' vocab=258>"
    telemetry = tinkex.Telemetry()
    telemetry.record("submission")
    telemetry.record("failure", category="server")
    telemetry.record("completed", latency=0.5)
    assert repr(telemetry) == "<Telemetry submissions=1 completed=1 failed=1 cancelled=0 retries=0 p50=0.5s>"

