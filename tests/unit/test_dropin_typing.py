"""``mypy --strict`` on a user's script that uses the drop-in methods (issue 13, "done when").

The script is written as an official-SDK user would write it (``import tinkex as tinker``,
annotations with ``APIFuture``, ``await`` on futures, the ``*_async`` coroutines, the 0.38
extras); it must check clean against the installed tinkex, and the mistakes issue 14 item 14
names (``sample(prompt)`` without sampling parameters) must be reported.
"""

from __future__ import annotations

from pathlib import Path

from .test_packaging import mypy_strict, outside  # noqa: F401  (the fixture is used by name)

USER_SCRIPT = """\
import asyncio
from typing import List, Optional

import tinkex as tinker
from tinkex import types


def connect(url: str) -> tinker.ServiceClient:
    return tinker.ServiceClient({"experiment": "x"}, "project", display_name="run", base_url=url, api_key="tml-x")


def sync_path(service: tinker.ServiceClient) -> List[int]:
    client: tinker.SamplingClient = service.create_sampling_client(base_model="tinkex/ngram-small").result()
    prompt = tinker.ModelInput.from_ints([1, 2, 3, 4])
    targets = tinker.TensorData(data=[5, 6, 7], dtype="int64", shape=[3, 1])
    future: tinker.APIFuture[tinker.SampleResponse] = client.sample(
        prompt, 1, tinker.SamplingParams(max_tokens=4), include_prompt_logprobs=True, topk_sample_logprobs=2,
        target_prompt_logprobs=targets, prompt_alt_tokens_k=1, prompt_logprobs_last_n=2)
    response: tinker.SampleResponse = future.result(timeout=30)
    last: List[Optional[float]] = client.compute_logprobs(prompt, prompt_logprobs_last_n=2).result()
    sequence: tinker.SampledSequence = response.sequences[0]
    handle: str = client.get_sampler_handle()
    again: tinker.SamplingClient = tinker.SamplingClient.from_sampler_handle(handle, api_key="tml-x")
    del last, again
    service.close("success").result()
    return sequence.tokens


async def async_path(service: tinker.ServiceClient) -> int:
    client = await service.create_sampling_client_async(base_model="tinkex/ngram-small")
    same: tinker.SamplingClient = await service.create_sampling_client(base_model="tinkex/ngram-small")
    prompt = types.ModelInput.from_ints([1, 2, 3])
    params = types.SamplingParams(max_tokens=4)
    many: List[types.SampleResponse] = await asyncio.gather(
        *[client.sample_async(prompt, 1, params) for _ in range(3)])
    one: types.SampleResponse = await client.sample(prompt, 1, params)
    timed: types.SampleResponse = await same.sample(prompt, 1, params).result_async(timeout=5)
    task: asyncio.Task[types.SampleResponse] = asyncio.create_task(client.sample(prompt, 1, params).coroutine())
    logprobs: List[Optional[float]] = await client.compute_logprobs_async(prompt)
    model: Optional[str] = await client.get_base_model_async()
    capabilities = await service.get_server_capabilities_async()
    del one, timed, logprobs, model, capabilities
    return len(many) + len((await task).sequences)


def handle_errors(service: tinker.ServiceClient) -> str:
    try:
        service.create_sampling_client(base_model="nope")
    except tinker.APIStatusError as exc:
        return str(exc.status_code)
    except tinker.TinkerError as exc:
        return type(exc).__name__
    return ""
"""

MISTAKES = """\
import tinkex as tinker

client: tinker.SamplingClient
client.sample(tinker.ModelInput.from_ints([1]))
client.sample(tinker.ModelInput.from_ints([1]), 1, tinker.SamplingParams(), topk_sample_logprobs="3")
"""


def test_a_user_script_with_the_drop_in_methods_checks_under_mypy_strict(outside: Path) -> None:  # noqa: F811
    done = mypy_strict(outside, USER_SCRIPT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found in 1 source file" in done.stdout


def test_sample_without_sampling_params_is_a_type_error(outside: Path) -> None:  # noqa: F811
    done = mypy_strict(outside, MISTAKES)
    assert done.returncode == 1, done.stdout
    assert 'Missing positional arguments "num_samples", "sampling_params" in call to "sample"' in done.stdout
    assert 'Argument "topk_sample_logprobs" to "sample" of "SamplingClient" has incompatible type "str"' \
        in done.stdout, done.stdout
