"""Batch throughput: 10,000 prompts through ``tinkex batch`` on the echo model.

Starts ``python -m tinkex.server`` with ``tinkex/echo`` in its own process (its CPU is never
counted), writes an input file of text prompts, then times ``tinkex batch IN OUT`` as a
subprocess in three set-ups: one process, ``--processes 2``, and ``--dask-scheduler`` on a
two-worker ``LocalCluster`` (worker processes, one thread each). For each it reports wall
time, prompts per second, client CPU (user + sys of the command and its worker processes; for
Dask, of the command plus the Dask workers, measured on the workers) and peak RSS (the largest
client process, and the sum over client processes: each process's kernel high-water mark,
read every 50 ms; worker processes are found with psutil when it is installed). Medians over
``--repeats`` runs. Every run's output is checked: one line per id.

A last row runs one process over a fifth of the lines, to show memory does not grow with the
number of lines.

Usage:
    .venv/bin/python bench/batch.py                      # 10,000 prompts, 3 repeats
    .venv/bin/python bench/batch.py --lines 2000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import requests

REPO = Path(__file__).resolve().parents[1]
MODEL = "tinkex/echo"
API_KEY = "tml-bench"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=10_000, help="prompts in the input file")
    parser.add_argument("--repeats", type=int, default=3, help="runs per set-up (medians are reported)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--setups", default="1,2,dask",
                        help="comma separated: 1 (one process), 2 (--processes 2), dask")
    parser.add_argument("--concurrency", type=int, help="pass --concurrency N to every run (default: the CLI's)")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the fifth-size memory run")
    return parser


# -- the server --------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    command = [sys.executable, "-m", "tinkex.server", "--port", str(port), "--model", MODEL, "--api-key", API_KEY,
               "--log-level", "WARNING"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited at start-up")
        try:
            requests.get(url + "/api/v1/healthz", headers={"X-API-Key": API_KEY}, timeout=1)
            return process, url
        except requests.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the server did not come up within 60 s")


# -- one run -----------------------------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> Optional[float]:
    """The kernel's high-water mark of a process's RSS (``VmHWM``), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TreeSampler:
    """Reads the peak RSS of every process of a tree (plus extra pids) every 50 ms.

    Each process's own peak comes from the kernel (``VmHWM``), so sampling only has to see
    the process once before it exits; children are found with psutil when it is installed.
    """

    def __init__(self, pid: int, extra_pids: List[int]) -> None:
        self._root = pid
        self._extra = extra_pids
        self.peaks: Dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _pids(self) -> List[int]:
        pids = [self._root, *self._extra]
        try:
            import psutil

            pids += [child.pid for child in psutil.Process(self._root).children(recursive=True)]
        except Exception:  # no psutil, or the command already exited
            pass
        return pids

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._pids():
                peak = _peak_rss_mb(pid)
                if peak is not None:
                    self.peaks[pid] = max(peak, self.peaks.get(pid, 0.0))

    def stop(self) -> tuple[float, float]:
        """(largest single process, sum over processes) in MB."""
        self._stop.set()
        self._thread.join()
        values = list(self.peaks.values()) or [float("nan")]
        return max(values), sum(values)


def run_once(command: List[str], out: Path, dask: Any = None) -> Dict[str, float]:
    if out.exists():
        out.unlink()
    worker_pids = list(dask.run(os.getpid).values()) if dask is not None else []
    worker_cpu_before = _dask_cpu(dask)
    env = {**os.environ, "TINKER_API_KEY": API_KEY}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    sampler = TreeSampler(process.pid, worker_pids)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    largest, total = sampler.stop()
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if status != 0:
        raise SystemExit(f"{shlex.join(command)} failed ({status}):\n{stderr[-2000:]}")
    worker_cpu = _dask_cpu(dask) - worker_cpu_before
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime + worker_cpu,
        "peak_rss_mb": largest,
        "tree_rss_mb": total,
    }


def _dask_cpu(dask: Any) -> float:
    if dask is None:
        return 0.0
    return sum(dask.run(_own_cpu).values())


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_output(out: Path, lines: int) -> None:
    ids = set()
    with out.open("rb") as results:
        for line in results:
            record = json.loads(line)
            assert "sequences" in record, record
            ids.add(record["id"])
    if ids != set(range(lines)):
        raise SystemExit(f"{out}: {len(ids)} distinct ids, expected {lines}")


# -- the set-ups --------------------------------------------------------------------------------------


def write_input(path: Path, lines: int) -> None:
    with path.open("w", encoding="utf-8") as source:
        for number in range(lines):
            source.write(json.dumps({"id": number, "prompt": f"Prompt number {number}: the quick brown fox"}) + "\n")


def batch_command(url: str, source: Path, out: Path, args: argparse.Namespace, *extra: str) -> List[str]:
    window = ["--concurrency", str(args.concurrency)] if args.concurrency else []
    return [sys.executable, "-m", "tinkex", "batch", str(source), str(out), "--model", MODEL, "--base-url", url,
            "--max-tokens", str(args.max_tokens), "--no-progress", *window, *extra]


def measure(name: str, command: List[str], out: Path, lines: int, repeats: int, dask: Any = None) -> Dict[str, Any]:
    shown = shlex.join(["tinkex", *command[3:]])
    print(f"\n$ TINKER_API_KEY={API_KEY} {shown}", flush=True)
    runs = []
    for _ in range(repeats):
        runs.append(run_once(command, out, dask))
        check_output(out, lines)
        print("  run: " + ", ".join(f"{key} {value:.2f}" for key, value in runs[-1].items()), flush=True)
    figures = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    figures.update(name=name, lines=lines, command=shown, runs=repeats)
    return figures


def with_dask_cluster(fn: Any) -> Any:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      worker_dashboard_address=None) as cluster, Client(cluster) as client:
        return fn(cluster.scheduler_address, client)


def report(rows: List[Dict[str, Any]]) -> None:
    print("\n| set-up | prompts | wall (s) | prompts/s | client CPU (s) | CPU per prompt (ms) | peak RSS, largest "
          "process (MB) | peak RSS, all client processes (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['name']} | {row['lines']:,} | {row['wall_s']:.2f} | {row['lines'] / row['wall_s']:,.0f} | "
              f"{row['cpu_s']:.2f} | {1000 * row['cpu_s'] / row['lines']:.2f} | {row['peak_rss_mb']:.0f} | "
              f"{row['tree_rss_mb']:.0f} |")
    print(f"\n(median of the runs; {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; the server runs in its own "
          "process and is not counted)")


def main() -> None:
    args = _parser().parse_args()
    setups = args.setups.split(",")
    server, url = start_server()
    rows: List[Dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="tinkex-bench-batch-") as scratch:
            source, out = Path(scratch) / "in.jsonl", Path(scratch) / "out.jsonl"
            write_input(source, args.lines)
            if "1" in setups:
                rows.append(measure("1 process", batch_command(url, source, out, args), out, args.lines,
                                    args.repeats))
            if "2" in setups:
                rows.append(measure("2 processes", batch_command(url, source, out, args, "--processes", "2"), out,
                                    args.lines, args.repeats))
            if "dask" in setups:
                rows.append(with_dask_cluster(lambda address, client: measure(
                    "Dask, 2 workers", batch_command(url, source, out, args, "--dask-scheduler", address,
                                                     "--send-api-key"), out, args.lines, args.repeats, client)))
            if args.scaling:
                small = Path(scratch) / "small.jsonl"
                write_input(small, args.lines // 5)
                rows.append(measure("1 process, fifth of the lines", batch_command(url, small, out, args), out,
                                    args.lines // 5, 1))
    finally:
        server.terminate()
        server.wait(timeout=30)
    report(rows)


if __name__ == "__main__":
    main()
