"""A pickled SamplingClient reaching a worker process that has no API key (issue 14 item 13).

The worker must not die unpickling it (the parent would see only ``BrokenProcessPool``): the
clear ``ValidationError`` naming ``api_key`` reaches the caller through the task's future, the
pool stays usable, and the key is never in the pickle.
"""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterator, List

import pytest

import tinkex
from tinkex import errors, types
from tinkex.server import LocalServer

ECHO = "tinkex/echo"


def sample_in_worker(client: Any) -> List[int]:
    response = client.sample(types.ModelInput.from_ints([5, 6]), 1, types.SamplingParams(max_tokens=2)).result(30)
    return list(response.sequences[0].tokens)


def describe_in_worker(client: Any) -> str:
    return repr(client)


def worker_pid(_: int) -> int:
    import os

    return os.getpid()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    with LocalServer(models=[ECHO]) as running:
        yield running


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_a_worker_without_a_key_returns_the_validation_error(server: LocalServer, start_method: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    with tinkex.ServiceClient(api_key=server.api_key, base_url=server.base_url) as service:
        client = service.create_sampling_client(base_model=ECHO)
        assert server.api_key.encode() not in pickle.dumps(client)
        context = multiprocessing.get_context(start_method)
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            pids = {pool.submit(worker_pid, 0).result(60)}
            with pytest.raises(errors.ValidationError) as caught:
                pool.submit(sample_in_worker, client).result(60)
            assert caught.value.field == "api_key"
            assert "TINKER_API_KEY" in str(caught.value) and "pickle_api_key" in str(caught.value)
            assert "could not be restored" in repr(pool.submit(describe_in_worker, client).result(60))
            pids.add(pool.submit(worker_pid, 0).result(60))
    assert len(pids) == 1, "the worker died and was replaced (or the pool broke)"
