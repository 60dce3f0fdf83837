"""Batch sampling: many prompts through one SamplingClient, in bounded memory.

:func:`sample_many` yields results in input order, :func:`sample_many_unordered` yields
``(index, result)`` as results arrive, and :func:`run_batch` runs a resumable JSONL file
through them (it is what ``tinkex batch`` calls). Prompts are consumed lazily: a generator of
ten million prompts is never materialised, and at most ``max_in_flight`` prompts are
outstanding (submitted and not yet yielded) at any time.

Prompts may be a :class:`~tinkex.types.ModelInput`, a list (or tuple) of token ids, a str
(encoded with ``client.get_tokenizer()``, no chat template) or a :class:`BatchItem` carrying
one of those with its own sampling parameters or sample count.

Scale-out: pass ``executor=`` a ``concurrent.futures.ProcessPoolExecutor`` or a
``dask.distributed.Client``. The client is pickled once per batch; each worker process
unpickles it once and samples from the same sampling session (seq_ids from ``clone_id ×
10^9``). Workers need the API key: create the ServiceClient with ``pickle_api_key=True``, or
set ``TINKER_API_KEY`` in the workers' environment. Prompts travel to workers in chunks of
``chunk_size``; a chunk runs its prompts concurrently on the worker's client. Give a process
pool a ``spawn`` or ``forkserver`` context (``mp_context=multiprocessing.get_context("spawn")``):
forking a process that runs client threads can deadlock the child. A process that has run a
chunk exits as soon as the process that started it dies, so a killed batch leaves no worker
heartbeating its session; workers that cannot build the client (most often: no API key) stop
the batch at once with :class:`WorkerSetupError`.

Files: :func:`run_batch` reads a JSONL input once (a pipe or FIFO works) and appends to an
output it recognises as its own, refusing any other file; ``tinkex batch --help`` documents both
line formats.

Example:
    >>> params = types.SamplingParams(max_tokens=16)  # doctest: +SKIP
    >>> for response in sample_many(client, ["Hello", "Goodbye"], params):  # doctest: +SKIP
    ...     print(response.sequences[0].tokens)
"""

from ._exec import BatchItem, BatchWorkerError, WorkerSetupError
from ._run import DEFAULT_ABORT_AFTER, BatchAbortedError, BatchSummary, is_permanent, run_batch
from ._sample import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_IN_FLIGHT, sample_many, sample_many_unordered

__all__ = [
    "BatchItem",
    "BatchSummary",
    "BatchAbortedError",
    "BatchWorkerError",
    "WorkerSetupError",
    "sample_many",
    "sample_many_unordered",
    "run_batch",
    "is_permanent",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_ABORT_AFTER",
]
