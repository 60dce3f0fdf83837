"""The 0.38 docs' style, sync: top-level names, ``.result()`` on every future, typed errors,
sampler handles and an explicit close.

Runs unchanged under the official SDK; under tinkex only the import lines differ.
"""

import json
import os

import tinker

service_client = tinker.ServiceClient({"experiment": "drop-in"}, display_name="drop-in check",
                                      base_url=os.environ["TINKER_BASE_URL"],
                                      api_key=os.environ["TINKER_API_KEY"])
sampling_client = service_client.create_sampling_client(base_model="tinkex/ngram-small").result()
assert sampling_client.get_base_model() == "tinkex/ngram-small"

prompt = tinker.ModelInput.from_ints(list(b"Tokens arrive "))
params = tinker.SamplingParams(max_tokens=16, temperature=1.0, top_k=20, top_p=0.95, seed=3)
response = sampling_client.sample(prompt, 1, params, include_prompt_logprobs=True,
                                  topk_prompt_logprobs=2).result(timeout=60)
assert isinstance(response, tinker.SampleResponse)
assert isinstance(response.sequences[0], tinker.SampledSequence)
assert response.prompt_logprobs is not None and response.prompt_logprobs[0] is None
assert response.topk_prompt_logprobs is not None

handle = sampling_client.get_sampler_handle()
assert os.environ["TINKER_API_KEY"] not in handle
other = tinker.SamplingClient.from_sampler_handle(handle)
again = other.sample(prompt, 1, params).result(timeout=60)
assert list(again.sequences[0].tokens) == list(response.sequences[0].tokens)

errors = {}
try:
    service_client.create_sampling_client(base_model="no-such/model").result(timeout=60)
except tinker.APIStatusError as exc:
    assert isinstance(exc, tinker.TinkerError) and isinstance(exc, tinker.APIError)
    errors["unknown_model"] = [type(exc).__name__, exc.status_code]
except tinker.TinkerError as exc:
    errors["unknown_model"] = [type(exc).__name__, None]

service_client.close("success").result()

print(json.dumps({
    "tokens": list(response.sequences[0].tokens),
    "prompt_logprobs": response.prompt_logprobs,
    "topk_prompt_logprobs": [None if row is None else [list(cell) for cell in row]
                             for row in response.topk_prompt_logprobs],
    "errors": errors,
}))
