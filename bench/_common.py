"""Measurement loop shared by the tinkex and the official-SDK sides of the client benchmark.

Standard library only: the official side runs it in the side venv, where tinkex is absent.
A *submit* function starts one sample and returns a ``concurrent.futures.Future``; the loop
keeps a fixed number of them in flight (closed loop) and reads the process's CPU clock, so
the figures cover every thread of the client process and nothing of the server's.
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["Submit", "run_suite", "percentile", "rss_mb", "os_threads"]

Submit = Callable[[], "Future[Any]"]
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def cpu_seconds() -> float:
    """User + system CPU of this process (all threads) so far."""
    times = os.times()
    return times.user + times.system


def rss_mb() -> float:
    """Resident memory now (Linux ``/proc``), else the peak so far."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def os_threads() -> int:
    """OS threads of this process (native ones too), else Python's count."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class _ClosedLoop:
    """Keeps ``in_flight`` samples running until told to stop, recording each latency."""

    def __init__(self, submit: Submit, in_flight: int) -> None:
        self.submit = submit
        self.slots = threading.Semaphore(in_flight)
        self.in_flight = in_flight
        self.latencies: List[float] = []
        self.errors: List[str] = []
        self._lock = threading.Lock()

    def run(self, seconds: float, max_samples: int) -> int:
        end = time.perf_counter() + seconds
        sent = 0
        while sent < max_samples and time.perf_counter() < end:
            self.slots.acquire()
            self._start()
            sent += 1
        for _ in range(self.in_flight):  # drain: every slot back means every sample done
            self.slots.acquire()
        return sent

    def _start(self) -> None:
        started = time.perf_counter()
        try:
            future = self.submit()
        except Exception as exc:  # a submit error is a result to report, not a crash
            self._finish(started, repr(exc))
            return
        future.add_done_callback(lambda f: self._finish(started, _error_of(f)))

    def _finish(self, started: float, error: Optional[str]) -> None:
        elapsed = time.perf_counter() - started
        with self._lock:
            if error is None:
                self.latencies.append(elapsed)
            else:
                self.errors.append(error)
        self.slots.release()


def _error_of(future: Future[Any]) -> Optional[str]:
    if future.cancelled():
        return "cancelled"
    exc = future.exception()
    return None if exc is None else repr(exc)


def measure_level(submit: Submit, in_flight: int, seconds: float, max_samples: int) -> Dict[str, Any]:
    """One repetition at a fixed number in flight."""
    loop = _ClosedLoop(submit, in_flight)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    loop.run(seconds, max_samples)
    cpu, wall = cpu_seconds() - cpu0, time.perf_counter() - wall0
    done = len(loop.latencies)
    return {
        "samples": done,
        "errors": len(loop.errors),
        "first_error": loop.errors[0] if loop.errors else None,
        "samples_per_s": done / wall if wall > 0 else 0.0,
        "cpu_ms_per_sample": 1000.0 * cpu / done if done else float("nan"),
        "p50_ms": 1000.0 * percentile(loop.latencies, 0.50),
        "p99_ms": 1000.0 * percentile(loop.latencies, 0.99),
    }


def _median_of(reps: List[Dict[str, Any]]) -> Dict[str, Any]:
    keys = ("samples_per_s", "cpu_ms_per_sample", "p50_ms", "p99_ms")
    summary: Dict[str, Any] = {key: statistics.median(rep[key] for rep in reps) for key in keys}
    summary["samples_per_s_range"] = [min(r["samples_per_s"] for r in reps), max(r["samples_per_s"] for r in reps)]
    summary["cpu_ms_range"] = [min(r["cpu_ms_per_sample"] for r in reps), max(r["cpu_ms_per_sample"] for r in reps)]
    summary["samples"] = sum(rep["samples"] for rep in reps)
    summary["errors"] = sum(rep["errors"] for rep in reps)
    summary["first_error"] = next((rep["first_error"] for rep in reps if rep["first_error"]), None)
    summary["repetitions"] = len(reps)
    return summary


def measure_burst(submit: Submit, in_flight: int, rounds: int) -> Dict[str, Any]:
    """Start ``in_flight`` samples at once, ``rounds`` times: peak threads and RSS, RSS after each."""
    gc.collect()
    before = rss_mb()
    peak_threads, peak_rss, after, seconds = 0, before, [], []
    for _ in range(rounds):
        started = time.perf_counter()
        futures = [submit() for _ in range(in_flight)]
        while not all(f.done() for f in futures):
            peak_threads, peak_rss = max(peak_threads, os_threads()), max(peak_rss, rss_mb())
            time.sleep(0.005)
        seconds.append(time.perf_counter() - started)
        failed = sum(1 for f in futures if f.cancelled() or f.exception() is not None)
        if failed:
            raise RuntimeError(f"{failed} of {in_flight} samples of the burst failed: {_first_failure(futures)}")
        del futures
        gc.collect()
        after.append(rss_mb())
    return {
        "in_flight": in_flight, "rounds": rounds, "threads_peak": peak_threads, "rss_mb_before": before,
        "rss_mb_peak": peak_rss, "rss_mb_after_each_round": after, "seconds_median": statistics.median(seconds),
        "threads_idle": os_threads(),
    }


def _first_failure(futures: Sequence[Future[Any]]) -> str:
    for future in futures:
        if future.cancelled():
            return "cancelled"
        if future.exception() is not None:
            return repr(future.exception())
    return "?"


def run_suite(
    submit: Submit, *, levels: Sequence[int], repetitions: int, seconds: float, max_samples: int,
    burst: int, burst_rounds: int, warmup: int = 200,
) -> Dict[str, Any]:
    """Warm up, then each level ``repetitions`` times (medians), then the burst."""
    measure_level(submit, min(64, max(levels)), 60.0, warmup)
    results: Dict[str, Any] = {"levels": {}, "threads_before": os_threads()}
    for level in levels:
        reps = [measure_level(submit, level, seconds, max_samples) for _ in range(repetitions)]
        results["levels"][str(level)] = _median_of(reps)
    if burst:
        results["burst"] = measure_burst(submit, burst, burst_rounds)
    return results
