"""The official docs' quick start, sync: the client used as create_sampling_client returns it.

Runs unchanged under the official SDK; under tinkex only the import lines differ. Reads
TINKER_BASE_URL and TINKER_API_KEY; prints the results as JSON for the comparison.
"""

import json

import tinker
from tinker import types

BASE_MODEL = "tinkex/ngram-small"

service_client = tinker.ServiceClient()
sampling_client = service_client.create_sampling_client(base_model=BASE_MODEL)

prompt = types.ModelInput.from_ints(list(b"The sampling client "))
params = types.SamplingParams(max_tokens=24, temperature=0.7, seed=7, stop=[". ", "\n"])
future = sampling_client.sample(prompt=prompt, sampling_params=params, num_samples=2)
result = future.result()
assert len(result.sequences) == 2
for sequence in result.sequences:
    assert sequence.stop_reason in ("stop", "length")

logprobs = sampling_client.compute_logprobs(prompt).result()
assert logprobs[0] is None and all(lp is not None and lp <= 0 for lp in logprobs[1:])

print(json.dumps({
    "tokens": [list(seq.tokens) for seq in result.sequences],
    "logprobs": [list(seq.logprobs or []) for seq in result.sequences],
    "stop_reasons": [str(getattr(seq.stop_reason, "value", seq.stop_reason)) for seq in result.sequences],
    "prompt_logprobs": logprobs,
}))
