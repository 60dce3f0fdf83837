"""The cookbook's asyncio style: ``await`` the futures, ``*_async`` methods, ``asyncio.gather``.

Runs unchanged under the official SDK; under tinkex only the import lines differ.
"""

import asyncio
import json

import tinker
from tinker import types

BASE_MODEL = "tinkex/ngram-small"


async def main() -> dict:
    service_client = tinker.ServiceClient()
    sampling_client = await service_client.create_sampling_client_async(base_model=BASE_MODEL)
    second_client = await service_client.create_sampling_client(base_model=BASE_MODEL)
    prompt = types.ModelInput.from_ints(list(b"Awaiting the "))

    def params(seed: int) -> types.SamplingParams:
        return types.SamplingParams(max_tokens=12, temperature=0.8, seed=seed)

    gathered = await asyncio.gather(*[
        sampling_client.sample_async(prompt=prompt, num_samples=1, sampling_params=params(seed))
        for seed in range(4)
    ])
    awaited = await sampling_client.sample(prompt=prompt, num_samples=1, sampling_params=params(0))
    with_timeout = await second_client.sample(prompt, 1, params(1)).result_async(timeout=60)
    task = asyncio.create_task(sampling_client.sample(prompt, 1, params(2)).coroutine())
    logprobs = await sampling_client.compute_logprobs_async(prompt)
    awaited_logprobs = await sampling_client.compute_logprobs(prompt)
    capabilities = await service_client.get_server_capabilities_async()
    base_model = await sampling_client.get_base_model_async()
    blocking_inside_loop = sampling_client.sample(prompt, 1, params(3)).result()
    tasked = await task
    assert [list(r.sequences[0].tokens) for r in (awaited, with_timeout, tasked, blocking_inside_loop)] == [
        list(gathered[i].sequences[0].tokens) for i in range(4)]
    assert logprobs == awaited_logprobs
    return {
        "tokens": [list(r.sequences[0].tokens) for r in gathered],
        "logprobs": logprobs,
        "models": sorted(m.model_name for m in capabilities.supported_models),
        "base_model": base_model,
    }


print(json.dumps(asyncio.run(main())))
