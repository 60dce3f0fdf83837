"""Chaos: thousands of samples at high concurrency while the server injects every kind of fault.

The server (a LocalServer in a child process, echo model) injects 5xx, 429, dropped
connections before and after handling, 410s, 408s, added latency and paused windows. The
same workload runs once fault-free for reference. Proven here:

* every future resolves exactly once, with a result (nothing lost, nothing hung);
* every result equals the fault-free run's (tokens, logprobs, stop reasons);
* the server generated no (sampling_session_id, seq_id) twice, and the only extra
  generations are the requests the client resubmitted after a 410;
* the client's thread count and RSS return to their starting level after ``close()``.

Sizes: ``TINKEX_CHAOS_SAMPLES`` / ``TINKEX_CHAOS_IN_FLIGHT``: 800 at 200 in flight in the
default run (~45 s), 5,000 at 200 under ``make soak``; the default run also samples the full
5,000 at 200 in flight with asample 429s at 0.5 % instead of 5 % (~80 s, every other fault
unchanged), and 5,000 at 2,000 in flight in default and in poller mode with asample 429s at
0.1 % (~30 s and ~60 s). Under ``make soak``, ``TINKEX_SOAK_SECONDS`` repeats rounds with new
seeds until that many seconds have passed. Where the time goes: 5 % 429s on
``asample`` each stop every submission of the client for 1 s and throttle dispatch to 10 for
10 s after (protocol 7.4, as the official SDK does), which caps the run near 19 samples/s;
measured for 5,000: 266 s wall, 12 s client CPU, 4 s server CPU. Without asample 429s the
same 5,000 take 22 s. A summary line per round is logged at INFO for the README table.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import resource
import threading
import time
from concurrent.futures import wait
from typing import Any, Dict, Iterator, List, Optional, Tuple

import attrs
import pytest

import tinkex
from tests.reliability.serve_local import ServerProcess
from tinkex import types

pytestmark = [pytest.mark.soak, pytest.mark.timeout(400)]

logger = logging.getLogger(__name__)

KEY = "tml-chaos-0123456789"
ECHO = "tinkex/echo"
SOAK_SECONDS = float(os.environ.get("TINKEX_SOAK_SECONDS", "0") or 0)
# 5,000 under `make soak`; 800 in the default run, where the protocol's client-wide 429
# backoff (7.4) makes 5,000 take ~270 s (see the module docstring).
SAMPLES = int(os.environ.get("TINKEX_CHAOS_SAMPLES", "5000" if SOAK_SECONDS else "800"))
IN_FLIGHT = int(os.environ.get("TINKEX_CHAOS_IN_FLIGHT", "200"))
ROUND_BOUND_S = 600.0  # a round that has not finished by then counts its open futures as hung

# 5 % 5xx, 5 % 429, 2 % dropped before + 2 % after handling, 1 % 410, 2 % 408 on the two
# sampling routes; every other route sees the retryable faults; latency and paused windows
# everywhere.
CHAOS_FAULTS = ",".join([
    "500=0.025", "503=0.025", "429=0.05", "drop_before=0.02", "drop_after=0.02",
    "asample.410=0.01", "retrieve_future.410=0.01", "retrieve_future.408=0.02",
    "latency_ms=2", "paused_capacity=2s/12s", "paused_rate_limit=1500ms/7s",
])
SERVER_OPTIONS: Dict[str, Any] = {
    "models": [ECHO], "poll_hold_s": 1.0, "result_retention_s": 3600.0, "promise_expiry_s": 3600.0,
    "max_concurrent_generations": 8,
}

Outcome = Tuple[Tuple[Tuple[int, ...], Tuple[float, ...], str], ...]


@attrs.frozen
class Job:
    prompt: Tuple[int, ...]
    num_samples: int
    params: types.SamplingParams


@attrs.frozen
class Run:
    outcomes: List[Optional[Outcome]]
    errors: List[Optional[BaseException]]
    resolutions: List[int]
    hung: int
    seconds: float
    client_cpu: float
    sampling_session_id: str
    telemetry: Dict[str, Any]


def workload(count: int, seed: int) -> List[Job]:
    """Deterministic jobs: random byte prompts, 1-2 samples, 1-24 tokens, a seed each."""
    rng = random.Random(seed)
    jobs = []
    for index in range(count):
        prompt = tuple(rng.randrange(256) for _ in range(rng.randint(1, 24)))
        params = types.SamplingParams(max_tokens=rng.randint(1, 24), seed=seed * 1_000_003 + index,
                                      temperature=0.7, top_k=50)
        jobs.append(Job(prompt, rng.choice((1, 1, 1, 2)), params))
    return jobs


def outcome(response: types.SampleResponse) -> Outcome:
    return tuple((tuple(s.tokens), tuple(s.logprobs or ()), str(s.stop_reason)) for s in response.sequences)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_jobs(base_url: str, jobs: List[Job], in_flight: int, before_close: Any = None) -> Run:
    """Sample every job with at most ``in_flight`` at once; close the client; collect everything."""
    resolutions = [0] * len(jobs)
    lock = threading.Lock()

    def resolved(index: int) -> Any:
        def callback(_future: Any) -> None:
            with lock:
                resolutions[index] += 1
        return callback

    cpu0, started = cpu_seconds(), time.monotonic()
    with tinkex.ServiceClient(api_key=KEY, base_url=base_url) as service:
        client = service.create_sampling_client(base_model=ECHO, max_workers=in_flight)
        futures = []
        for index, job in enumerate(jobs):
            future = client.sample(types.ModelInput.from_ints(list(job.prompt)), job.num_samples, job.params)
            future.add_done_callback(resolved(index))
            futures.append(future)
        done, not_done = wait(futures, timeout=ROUND_BOUND_S)
        outcomes: List[Optional[Outcome]] = []
        errors: List[Optional[BaseException]] = []
        for future in futures:
            error = future.exception(0) if future in done else None
            errors.append(error)
            outcomes.append(outcome(future.result(0)) if future in done and error is None else None)
        telemetry = attrs.asdict(client.get_telemetry().snapshot())
        ssid = client.sampling_session_id
        if before_close is not None:
            before_close()
    seconds = time.monotonic() - started
    return Run(outcomes, errors, resolutions, len(not_done), seconds, cpu_seconds() - cpu0, ssid, telemetry)


def check_server_records(stats: Dict[str, Any], ssid: str, jobs: int) -> Dict[str, int]:
    """No seq_id generated twice; extra requests only from resubmissions after a poll answered 410
    (the protocol's only reason for a new seq_id; the spec allows the regeneration)."""
    mine = [g for g in stats["generations"] if g["sampling_session_id"] == ssid]
    per_seq: Dict[int, int] = {}
    for record in mine:
        per_seq[record["seq_id"]] = per_seq.get(record["seq_id"], 0) + record["generations"]
    twice = sorted(seq for seq, count in per_seq.items() if count > 1)
    assert twice == [], f"seq_ids generated more than once: {twice[:20]}"
    injected_410 = stats["faults_by_route"].get("retrieve_future.410", 0)
    # A 410 on a poll, or on an asample resubmitted after a dropped answer (whose first copy the
    # server had already generated): both end that seq_id and the call goes on with a new one.
    answered_410 = stats["statuses"].get("retrieve_future 410", 0) + stats["statuses"].get("asample 410", 0)
    extra = len(mine) - jobs
    assert 0 <= extra <= answered_410, f"{extra} extra requests but only {answered_410} poll 410s"
    return {"records": len(mine), "extra_after_410": extra, "poll_410": answered_410, "injected_410": injected_410}


@pytest.fixture(scope="module")
def reference() -> Iterator[Dict[int, List[Optional[Outcome]]]]:
    """Fault-free outcomes, per workload seed, computed once on a clean server."""
    cache: Dict[int, List[Optional[Outcome]]] = {}
    yield cache


def fault_free(cache: Dict[int, List[Optional[Outcome]]], seed: int, jobs: List[Job]) -> List[Optional[Outcome]]:
    if seed not in cache:
        with ServerProcess(**SERVER_OPTIONS) as server:
            run = run_jobs(server.base_url, jobs, IN_FLIGHT)
        assert run.hung == 0 and all(e is None for e in run.errors)
        logger.info("fault-free: %d samples in %.1fs (client CPU %.2fs)", len(jobs), run.seconds, run.client_cpu)
        cache[seed] = run.outcomes
    return cache[seed]


def chaos_round(seed: int, reference_cache: Dict[int, List[Optional[Outcome]]], samples: int = SAMPLES,
                faults: str = CHAOS_FAULTS, in_flight: int = IN_FLIGHT, **server_options: Any) -> Dict[str, Any]:
    jobs = workload(samples, seed)
    expected = fault_free(reference_cache, seed, jobs)
    seen: Dict[str, Any] = {}
    with ServerProcess(faults=f"seed={seed},{faults}", **{**SERVER_OPTIONS, **server_options}) as server:
        # Read the server's records before close(): finishing the session forgets them.
        run = run_jobs(server.base_url, jobs, in_flight, lambda: seen.update(server.stats()))
        server_cpu = server.cpu_seconds()
    stats = seen
    failures = [(i, repr(e)) for i, e in enumerate(run.errors) if e is not None]
    assert run.hung == 0, f"{run.hung} futures did not resolve within {ROUND_BOUND_S}s"
    assert failures == [], f"{len(failures)} samples failed, first: {failures[:5]}"
    assert [i for i, n in enumerate(run.resolutions) if n != 1] == []
    wrong = [i for i, (got, want) in enumerate(zip(run.outcomes, expected)) if got != want]
    assert wrong == [], f"{len(wrong)} results differ from the fault-free run, first {wrong[:10]}"
    records = check_server_records(stats, run.sampling_session_id, len(jobs))
    assert stats["faults_total"] > samples * 0.1, stats["faults"]
    summary = {
        "seed": seed, "samples": len(jobs), "in_flight": in_flight, "seconds": round(run.seconds, 1),
        "client_cpu_s": round(run.client_cpu, 1), "server_cpu_s": round(server_cpu, 1),
        "faults": stats["faults"], "lost": 0, "duplicated": 0, "hung": 0, **records,
    }
    logger.info("chaos round: %s", summary)
    return summary


# The full size in the default run: every fault kind at the rates above, except that 429s on
# asample (each a client-wide 1 s backoff, protocol 7.4) come at 0.5 % instead of 5 %; polls and
# every other route still see 5 % 429s. The strict 5 % asample rate is the 800-sample test.
FULL_SIZE_SAMPLES = int(os.environ.get("TINKEX_CHAOS_FULL_SAMPLES", "5000"))
FULL_SIZE_FAULTS = CHAOS_FAULTS + ",asample.429=0.005"


def test_chaos_full_size_with_milder_asample_rate_limits(reference: Dict[int, List[Optional[Outcome]]],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    summary = chaos_round(101, reference, FULL_SIZE_SAMPLES, FULL_SIZE_FAULTS)
    reference.pop(101, None)
    assert summary["samples"] == FULL_SIZE_SAMPLES and summary["in_flight"] == IN_FLIGHT
    assert summary["faults"].get("429", 0) > 0 and summary["faults"].get("drop_after", 0) > 0


# At scale (issue: thousands in flight): the full size at 2,000 in flight, in default mode (a worker
# per in-flight sample) and in poller mode (one retrieve_futures poller, no thread per waiting sample).
SCALE_IN_FLIGHT = int(os.environ.get("TINKEX_CHAOS_SCALE_IN_FLIGHT", "2000"))
# asample 429s at 0.1 % here: each one throttles every submission of the client to 10 at once for
# 11 s (protocol 7.4), so at 0.5 % the throttle was on for nearly the whole run and the submit side
# never had thousands in flight. The 429 paths are the two tests above; every other fault is as there.
SCALE_FAULTS = CHAOS_FAULTS + ",asample.429=0.001"
MODES = {"default": {}, "poller": {"client_config": {"sample_use_retrieve_futures": True}}}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_chaos_full_size_at_thousands_in_flight(reference: Dict[int, List[Optional[Outcome]]],
                                                caplog: pytest.LogCaptureFixture, mode: str) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    fault_free(reference, 202, workload(FULL_SIZE_SAMPLES, 202))
    gc.collect()
    threads_before, rss_before = threading.active_count(), rss_bytes()
    summary = chaos_round(202, reference, FULL_SIZE_SAMPLES, SCALE_FAULTS, in_flight=SCALE_IN_FLIGHT,
                          max_concurrent_generations=SCALE_IN_FLIGHT, **MODES[mode])
    assert summary["samples"] == FULL_SIZE_SAMPLES and summary["in_flight"] == SCALE_IN_FLIGHT
    assert_threads_return(threads_before)
    gc.collect()
    grown = rss_bytes() - rss_before
    logger.info("%s mode at %d in flight: %s; RSS after close +%.1f MiB", mode, SCALE_IN_FLIGHT, summary,
                grown / 2**20)
    assert grown < 64 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB and stayed after close()"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_chaos_every_future_resolves_once_with_the_fault_free_result(
    reference: Dict[int, List[Optional[Outcome]]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=__name__)
    fault_free(reference, 1, workload(SAMPLES, 1))  # also warms up imports and allocator pools
    gc.collect()
    threads_before, rss_before, fds_before = threading.active_count(), rss_bytes(), open_fds()
    deadline = time.monotonic() + SOAK_SECONDS
    seed, rounds = 1, []
    while True:
        rounds.append(chaos_round(seed, reference))
        seed += 1
        if time.monotonic() >= deadline:
            break
    reference.clear()
    gc.collect()
    assert_threads_return(threads_before)
    grown = rss_bytes() - rss_before
    logger.info("after %d round(s): threads %d -> %d, fds %d -> %d, RSS grew %.1f MiB", len(rounds),
                threads_before, threading.active_count(), fds_before, open_fds(), grown / 2**20)
    assert open_fds() <= fds_before
    assert grown < 32 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB across the run"


def assert_threads_return(before: int) -> None:
    """Every thread the clients started has ended (a short grace for threads already exiting)."""
    limit = time.monotonic() + 5.0
    while threading.active_count() > before and time.monotonic() < limit:
        time.sleep(0.05)
    left = [t.name for t in threading.enumerate()]
    assert threading.active_count() <= before, f"threads left after close(): {left}"
