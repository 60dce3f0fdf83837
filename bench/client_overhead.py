"""Client overhead: CPU per sample, throughput, latency, threads and memory of a sampling client.

Starts ``python -m tinkex.server`` with the near-free ``tinkex/echo`` model in its own process
(so server CPU is never counted as client CPU), then measures, in this process, tinkex's
SamplingClient: client CPU per sample (user + sys of every thread), samples per second and
p50/p99 latency at 1, 64 and 512 in flight (medians of several repetitions), and threads and
RSS with 1,000 in flight (RSS after each of several bursts, to show memory stays flat). With
the official SDK's side venv (``.venv-tinker``, built on first use as for the compat tests) it
runs the same measurements of the official ``tinker`` SDK against the same server and prints
both side by side with their ratio.

Usage:
    .venv/bin/python bench/client_overhead.py                  # tinkex and the official SDK
    .venv/bin/python bench/client_overhead.py --no-official    # tinkex only
    .venv/bin/python bench/client_overhead.py --profile        # cProfile of every thread of the tinkex run
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from _common import run_suite
from _server import official_python

REPO = Path(__file__).resolve().parents[1]
MODEL = "tinkex/echo"
API_KEY = "tml-bench"
GOAL_CPU_MS = 1.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,64,512", help="samples in flight to measure (comma separated)")
    parser.add_argument("--repetitions", type=int, default=5, help="repetitions per level (medians are reported)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one repetition")
    parser.add_argument("--max-samples", type=int, default=20000, help="cap on samples per repetition")
    parser.add_argument("--burst", type=int, default=1000, help="samples started at once for threads/RSS (0: skip)")
    parser.add_argument("--burst-rounds", type=int, default=5, help="bursts in a row (RSS after each)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--official", dest="official", action="store_true", default=True,
                        help="also measure the official SDK (default)")
    parser.add_argument("--no-official", dest="official", action="store_false")
    parser.add_argument("--server", metavar="URL", help="use this running server instead of starting one")
    parser.add_argument("--profile", action="store_true", help="profile every thread of the tinkex run with cProfile")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--no-floor", dest="floor", action="store_false", default=True,
                        help="skip the one-at-a-time comparison with bare http.client and urllib3 loops")
    parser.add_argument("--floor-samples", type=int, default=25,
                        help="samples per turn of each loop in that comparison (the loops take turns)")
    parser.add_argument("--floor-rounds", type=int, default=60,
                        help="turns of each loop (medians are reported; short turns spread the machine's noise evenly)")
    return parser


# -- the server process -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "tinkex.server", "--port", str(port), "--model", MODEL, "--log-level", "WARNING"]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: an unread pipe could fill and stall the server
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if _healthy(port):
                return process, url
            time.sleep(0.1)
        process.kill()
        process.wait()
        log.seek(0)
        raise SystemExit(f"the server did not come up on {url}:\n{log.read().decode(errors='replace')[-3000:]}")


def _healthy(port: int) -> bool:
    # http.client, not requests: nothing in this process may share tinkex's urllib3 state.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/api/v1/healthz", headers={"X-API-Key": API_KEY})
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the two clients -------------------------------------------------------------------------------

def _request_spec(args: argparse.Namespace) -> Dict[str, Any]:
    prompt = [(17 * i + 3) % 256 for i in range(args.prompt_tokens)]
    return {"prompt": prompt, "sampling_params": {"max_tokens": args.max_tokens, "seed": 7, "temperature": 1.0}}


def _suite_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    return {"levels": [int(x) for x in args.levels.split(",")], "repetitions": args.repetitions,
            "seconds": args.seconds, "max_samples": args.max_samples, "burst": args.burst,
            "burst_rounds": args.burst_rounds}


def run_tinkex(url: str, args: argparse.Namespace) -> Dict[str, Any]:
    import tinkex
    from tinkex import types

    profiler = _AllThreadsProfiler() if args.profile else None
    if profiler is not None:
        profiler.start()  # before the client exists, so its worker threads are profiled too
    spec = _request_spec(args)
    started = time.perf_counter()
    with tinkex.ServiceClient(api_key=API_KEY, base_url=url) as service:
        client = service.create_sampling_client(base_model=MODEL)
        ready = time.perf_counter() - started
        prompt = types.ModelInput.from_ints(spec["prompt"])
        params = types.SamplingParams(**spec["sampling_params"])

        def submit() -> Any:
            return client.sample(prompt, 1, params)

        figures = run_suite(submit, **_suite_kwargs(args))
        if args.floor:
            figures["floor"] = _floor(url, client, prompt, params, args)
    if profiler is not None:
        profiler.report()
    figures.update(client=f"tinkex {tinkex.__version__}", startup_s=ready)
    return figures


def _floor(url: str, client: Any, prompt: Any, params: Any, args: argparse.Namespace) -> Dict[str, float]:
    """CPU per sample one at a time: tinkex beside the bare loops (medians, interleaved, same server)."""
    import statistics

    import _floor as floor

    request = {"prompt": prompt.to_json(), "sampling_params": params.to_json(), "num_samples": 1,
               "type": "sample", "prompt_logprobs": False, "topk_prompt_logprobs": 0}
    loops = {
        "http.client loop": floor.http_client_loop(url, API_KEY, client.sampling_session_id, request),
        "urllib3 loop": floor.urllib3_loop(url, API_KEY, client.sampling_session_id, request),
        "tinkex Transport.request x2": floor.transport_loop(client, request),
        "tinkex Sampler.execute": floor.sampler_loop(client, prompt, params),
        "tinkex sample().result()": floor.sample_loop(client, prompt, params),
        "sample().result(), no worker woken": floor.unwoken_sample_loop(client, prompt, params),
        "thread hand-off (no-op)": floor.handoff_loop(),
    }
    reps: Dict[str, List[float]] = {name: [] for name in loops}
    for loop in loops.values():
        loop(50)  # warm every connection and code path first
    for _ in range(args.floor_rounds):
        for name, loop in loops.items():
            reps[name].append(floor.cpu_us_per_sample(loop, args.floor_samples))
    replayed = floor.replayed_loops(client, prompt, params)
    try:
        for loop in replayed.values():
            loop(50)
        for _ in range(args.floor_rounds):
            for name, loop in replayed.items():
                reps.setdefault(name, []).append(floor.cpu_us_per_sample(loop, args.floor_samples))
    finally:
        floor.restore_network(client)
    return {name: statistics.median(values) for name, values in reps.items()}


class _AllThreadsProfiler:
    """cProfile in every thread started after ``start()`` (cProfile alone sees only its own thread)."""

    def __init__(self) -> None:
        self.profiles: List[Any] = []

    def start(self) -> None:
        import cProfile

        def hook(*_: Any) -> None:
            profile = cProfile.Profile(time.thread_time)  # CPU time of the thread, not wall time
            self.profiles.append(profile)  # list.append is atomic under the GIL
            profile.enable()  # replaces this hook in the calling thread

        threading.setprofile(hook)
        hook()

    def report(self) -> None:
        import pstats

        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(*self.profiles, stream=sys.stdout)  # the main thread's profile stops here
        print(f"\n# cProfile of the tinkex run, {len(self.profiles)} threads merged "
              "(thread CPU time; profiling inflates it, so measure without --profile)")
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(40)


def _against_server(args: argparse.Namespace, run: Callable[[str], Any]) -> Any:
    """Run one client against ``--server`` or a fresh server of its own (no state left by the other)."""
    if args.server:
        return run(args.server)
    server, url = _start_server()
    try:
        return run(url)
    finally:
        _stop_server(server)


def run_official(python: Path, url: str, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    spec = dict(_request_spec(args), base_url=url, api_key=API_KEY, base_model=MODEL, suite=_suite_kwargs(args))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "PYTHON"))}
    script = Path(__file__).with_name("_official_overhead.py")
    done = subprocess.run([str(python), str(script), json.dumps(spec)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"# official SDK run failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout)


# -- report -----------------------------------------------------------------------------------------

def _rows(figures: Dict[str, Any]) -> List[tuple[str, float]]:
    rows = []
    for level, f in figures["levels"].items():
        rows += [(f"client CPU ms/sample @{level}", f["cpu_ms_per_sample"]),
                 (f"samples/s @{level}", f["samples_per_s"]),
                 (f"p50 ms @{level}", f["p50_ms"]),
                 (f"p99 ms @{level}", f["p99_ms"])]
    burst = figures.get("burst")
    if burst:
        n = burst["in_flight"]
        rows += [(f"threads @{n} in flight", burst["threads_peak"]),
                 ("threads idle (after)", burst["threads_idle"]),
                 (f"RSS MB before {n}", burst["rss_mb_before"]),
                 (f"RSS MB peak @{n}", burst["rss_mb_peak"]),
                 (f"RSS MB after last of {burst['rounds']} bursts", burst["rss_mb_after_each_round"][-1])]
    rows.append(("start-up s (to a ready client)", figures["startup_s"]))
    return rows


def report(ours: Dict[str, Any], theirs: Optional[Dict[str, Any]]) -> None:
    header = f"{'metric':38} {ours['client']:>14}"
    if theirs:
        header += f" {theirs['client']:>14} {'tinkex/official':>16}"
    print(header)
    their_rows = dict(_rows(theirs)) if theirs else {}
    for name, value in _rows(ours):
        line = f"{name:38} {value:14.3f}"
        if theirs:
            other = their_rows.get(name, float("nan"))
            ratio = value / other if other else float("nan")
            line += f" {other:14.3f} {ratio:16.3f}"
        print(line)
    for label, figures in (("tinkex", ours), ("official", theirs)):
        if not figures:
            continue
        errors = {lvl: f["errors"] for lvl, f in figures["levels"].items() if f["errors"]}
        if errors:
            print(f"# {label}: failed samples per level {errors}; first: {_first_error(figures)}")
        if figures.get("burst"):
            after = ", ".join(f"{mb:.1f}" for mb in figures["burst"]["rss_mb_after_each_round"])
            print(f"# {label}: RSS MB after each burst of {figures['burst']['in_flight']}: {after}")
    floor = ours.get("floor")
    if floor:
        base = floor["urllib3 loop"]
        print("\n# one sample at a time, client CPU per sample (medians of short turns, the loops taking turns; "
              "same process, same server)")
        for name, value in floor.items():
            if "replayed" not in name:
                print(f"{name:38} {value:10.0f} us   {value / base:5.2f}x the urllib3 loop")
        parts = {
            "urllib3 (the floor loop)": base,
            "tinkex's HTTP layer over urllib3": floor["tinkex Transport.request x2"] - base,
            "sampling layer (build, gates, poll loop, decode)": (
                floor["tinkex Sampler.execute"] - floor["tinkex Transport.request x2"]),
            "sample(): future, pool submit, settling": (
                floor["tinkex sample().result()"] - floor["tinkex Sampler.execute"]),
            "  of which waking a worker the caller beats": (
                floor["tinkex sample().result()"] - floor["sample().result(), no worker woken"]),
        }
        print("# where tinkex's CPU per sample goes (differences of the loops above)")
        for name, value in parts.items():
            print(f"{name:52} {value:7.0f} us")
        print("# tinkex's own Python per sample, the network step replaying recorded answers (no socket, no wait)")
        for name in ("tinkex Sampler.execute, network replayed", "tinkex sample().result(), network replayed"):
            print(f"{name:52} {floor[name]:7.0f} us")
    cpu = [f["cpu_ms_per_sample"] for f in ours["levels"].values()]
    verdict = "met" if max(cpu) < GOAL_CPU_MS else "MISSED"
    print(f"# goal < {GOAL_CPU_MS} ms client CPU per sample: {verdict} (worst level {max(cpu):.3f} ms)")


def _first_error(figures: Dict[str, Any]) -> Optional[str]:
    return next((f["first_error"] for f in figures["levels"].values() if f["first_error"]), None)


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, prompt {args.prompt_tokens} tokens, "
          f"max_tokens {args.max_tokens}, model {MODEL}, {args.repetitions} x {args.seconds:g}s per level (medians)")
    ours = _against_server(args, lambda url: run_tinkex(url, args))
    theirs = None
    if args.official:
        python = official_python()
        if python is not None:
            theirs = _against_server(args, lambda url: run_official(python, url, args))
    report(ours, theirs)
    if args.json:
        Path(args.json).write_text(json.dumps({"tinkex": ours, "official": theirs}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
