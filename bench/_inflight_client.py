"""One client's side of ``bench/inflight.py``: samples/s at a fixed number in flight against a slow server.

Run with the interpreter whose SDK is measured (``.venv`` for tinkex, ``.venv-tinker`` for the
official SDK); it imports only that SDK and the standard library, and prints one JSON object.

Usage (normally started by bench/inflight.py)::

    python bench/_inflight_client.py '{"sdk": "tinkex", "base_url": ..., "levels": [64, 2000], ...}'
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import warnings
from typing import Any, Callable, Dict, List

from _common import cpu_seconds, os_threads, percentile, rss_mb


class _Peaks:
    """Samples threads and RSS every 50 ms while a level runs. Thread-safety: one writer thread."""

    def __init__(self) -> None:
        self.threads = 0
        self.rss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.threads, self.rss = max(self.threads, os_threads()), max(self.rss, rss_mb())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_level(submit: Callable[[], Any], in_flight: int, total: int) -> Dict[str, Any]:
    """Keep ``in_flight`` samples running until ``total`` have been started; wait for all."""
    slots = threading.Semaphore(in_flight)
    lock = threading.Lock()
    latencies: List[float] = []
    errors: List[str] = []

    def finish(started: float, future: Any) -> None:
        error = "cancelled" if future.cancelled() else future.exception()
        with lock:
            (errors.append(repr(error)) if error is not None else latencies.append(time.perf_counter() - started))
        slots.release()

    with _Peaks() as peaks:
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        for _ in range(total):
            slots.acquire()
            started = time.perf_counter()
            submit().add_done_callback(lambda f, s=started: finish(s, f))
        for _ in range(in_flight):
            slots.acquire()
        cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    return {
        "in_flight": in_flight, "samples": len(latencies), "errors": len(errors),
        "first_error": errors[0] if errors else None, "samples_per_s": len(latencies) / wall,
        "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99),
        "threads_peak": peaks.threads, "rss_mb_peak": peaks.rss, "cpu_ms_per_sample": 1e3 * cpu / max(1, total),
    }


def _tinkex(spec: Dict[str, Any]) -> Any:
    import tinkex
    from tinkex import types

    service = tinkex.ServiceClient(api_key=spec["api_key"], base_url=spec["base_url"])
    client = service.create_sampling_client(base_model=spec["model"])
    prompt = types.ModelInput.from_ints(spec["prompt"])
    params = types.SamplingParams(**spec["sampling_params"])
    return service, (lambda: client.sample(prompt, 1, params)), f"tinkex {tinkex.__version__}"


def _official(spec: Dict[str, Any]) -> Any:
    import tinker
    from tinker import types

    service = tinker.ServiceClient(base_url=spec["base_url"], api_key=spec["api_key"])
    created = service.create_sampling_client(base_model=spec["model"])
    client = created.result() if callable(getattr(created, "result", None)) else created
    prompt = types.ModelInput.from_ints(spec["prompt"])
    params = types.SamplingParams(**spec["sampling_params"])

    def submit() -> Any:
        api_future = client.sample(prompt=prompt, num_samples=1, sampling_params=params)
        return api_future.future() if callable(getattr(api_future, "future", None)) else api_future

    return service, submit, f"tinker {tinker.__version__}"


def main() -> int:
    spec = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.ERROR)  # the official SDK warns on every try_again
    warnings.simplefilter("ignore")
    service, submit, name = (_tinkex if spec["sdk"] == "tinkex" else _official)(spec)
    rss_idle = rss_mb()
    levels = [run_level(submit, n, max(spec["min_samples"], spec["rounds"] * n)) for n in spec["levels"]]
    closing = service.close("success")
    if callable(getattr(closing, "result", None)):
        closing.result(timeout=60)
    json.dump({"client": name, "rss_mb_idle": rss_idle, "levels": levels, "threads_after_close": os_threads()},
              sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
