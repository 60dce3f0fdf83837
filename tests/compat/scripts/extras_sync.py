"""The 0.38 SampleRequest extras and the numpy views, sync.

Runs unchanged under the official SDK; under tinkex only the import lines differ.
"""

import json

import tinker
from tinker import types

service_client = tinker.ServiceClient()
sampling_client = service_client.create_sampling_client(base_model="tinkex/ngram-small").result()
tokens = list(b"The sampling client ")
prompt = types.ModelInput.from_ints(tokens)
rows = len(tokens) - 1
# Row i scores prompt position i + 1: the actual next token (every other row; -1 = none) and a space.
cells = [value for i in range(rows) for value in (tokens[i + 1] if i % 2 == 0 else -1, ord(" "))]
targets = types.TensorData(data=cells, dtype="int64", shape=[rows, 2])

response = sampling_client.sample(
    prompt, 1, types.SamplingParams(max_tokens=6, temperature=1.0, seed=11),
    include_prompt_logprobs=True, topk_sample_logprobs=3, target_prompt_logprobs=targets,
    prompt_alt_tokens_k=2, prompt_logprobs_last_n=5,
).result()
sequence = response.sequences[0]
assert sequence.topk_logprobs is not None and len(sequence.topk_logprobs) == len(sequence.tokens)
assert response.prompt_logprobs is not None
assert all(lp is None for lp in response.prompt_logprobs[:-5])
assert response.target_prompt_logprobs is not None and response.target_prompt_logprobs.shape == [rows, 2]
alt = response.prompt_alt_tokens
assert alt is not None and alt.tokens.shape == [rows, 2] and alt.logprobs.shape == [rows, 2]

last_n = sampling_client.compute_logprobs(prompt, prompt_logprobs_last_n=4).result()
full = sampling_client.compute_logprobs(prompt).result()
assert last_n[-4:] == full[-4:] and all(lp is None for lp in last_n[:-4])

arrays = {
    "tokens_np": sequence.tokens_np.tolist(),
    "logprobs_np": sequence.logprobs_np.tolist(),
    "topk_ids": sequence.topk_logprobs_np.token_ids.tolist(),
    "prompt_logprobs_np_tail": response.prompt_logprobs_np[-5:].tolist(),
}
assert str(sequence.tokens_np.dtype) == "int32" and str(response.prompt_logprobs_np.dtype) == "float32"

print(json.dumps({
    "tokens": list(sequence.tokens),
    "topk_logprobs": [[list(cell) for cell in row] for row in sequence.topk_logprobs],
    "prompt_logprobs": response.prompt_logprobs,
    "target_prompt_logprobs": list(response.target_prompt_logprobs.data),
    "alt_tokens": list(alt.tokens.data),
    "alt_logprobs": list(alt.logprobs.data),
    "last_n": last_n,
    "arrays": arrays,
}))
