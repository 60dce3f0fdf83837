"""The official-SDK side of ``bench/client_overhead.py``; run with the side venv's python.

Usage (normally started by client_overhead.py)::

    .venv-tinker/bin/python bench/_official_overhead.py '{"base_url": ..., "api_key": ..., ...}'

Prints one JSON object with the same figures as the tinkex side (see bench/_common.py).
Must not import tinkex: only the official ``tinker`` package is installed where it runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from typing import Any, Dict

from _common import run_suite


def _submit_factory(client: Any, types: Any, spec: Dict[str, Any]) -> Any:
    prompt = types.ModelInput.from_ints(spec["prompt"])
    params = types.SamplingParams(**spec["sampling_params"])

    def submit() -> Any:
        api_future = client.sample(prompt=prompt, num_samples=1, sampling_params=params)
        # 0.38's APIFuture wraps a concurrent.futures.Future; older versions return one directly.
        return api_future.future() if callable(getattr(api_future, "future", None)) else api_future

    return submit


def main() -> int:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.ERROR)  # the SDK warns per try_again; keep the output JSON-only
    warnings.simplefilter("ignore", FutureWarning)
    started = time.perf_counter()
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=spec["base_url"], api_key=spec["api_key"])
    created = service.create_sampling_client(base_model=spec["base_model"])
    client = created.result() if callable(getattr(created, "result", None)) else created
    ready = time.perf_counter() - started
    figures = run_suite(_submit_factory(client, types, spec), **spec["suite"])
    closing = service.close("success")
    if callable(getattr(closing, "result", None)):
        closing.result(timeout=60)
    figures.update(client=f"tinker {tinker.__version__}", startup_s=ready)
    json.dump(figures, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
