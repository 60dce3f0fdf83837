"""Server throughput: sample round trips per second (asample + retrieve_future) with the echo model.

Starts ``python -m tinkex.server`` with ``tinkex/echo`` in its own process, pinned to one CPU
core where the OS allows (the client processes get the other cores), and drives it from
several client processes, each driving several keep-alive connections from one selector loop
with raw HTTP/1.1 over non-blocking sockets (so the client is cheap and never the bottleneck).
One round trip = ``asample`` (new seq_id) then ``retrieve_future`` with
``Accept: application/x-protobuf`` until the protobuf result arrives. Prints the median, min
and max of several timed runs, the server's CPU use (round trips per server CPU-second is the
figure that does not depend on what else the machine is doing) and the command line.

Usage:
    .venv/bin/python bench/server_throughput.py
    .venv/bin/python bench/server_throughput.py --processes 3 --connections 16 --runs 7 --duration 5
    .venv/bin/python bench/server_throughput.py --url http://127.0.0.1:8000   # an already running server
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from _server import API_KEY, MODEL, start_server

GOAL = 2000.0
PROMPT = list(b"The quick brown fox")


class RawConnection:
    """One keep-alive HTTP/1.1 connection: fixed headers, bodies with Content-Length."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}".encode()
        self.buffer = b""

    def post(self, path: str, body: bytes, accept: bytes = b"application/json") -> Tuple[int, bytes, bytes]:
        head = (
            b"POST /api/v1/" + path.encode() + b" HTTP/1.1\r\nHost: " + self.host
            + b"\r\nX-API-Key: " + API_KEY.encode() + b"\r\nAccept: " + accept
            + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )  # fmt: skip
        self.sock.sendall(head + body)
        return self._read()

    def _read(self) -> Tuple[int, bytes, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        length = int(headers.get(b"content-length", b"0"))
        while len(rest) < length:
            rest += self._recv()
        self.buffer = rest[length:]
        return status, headers.get(b"content-type", b""), rest[:length]

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        return data

    def _fill(self) -> None:
        self.buffer += self._recv()

    def close(self) -> None:
        self.sock.close()


def _json_post(conn: RawConnection, path: str, body: Dict[str, Any]) -> Dict[str, Any]:
    status, _, data = conn.post(path, json.dumps(body, separators=(",", ":")).encode())
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {data[:200]!r}")
    return json.loads(data)


def _sampler(conn: RawConnection) -> str:
    session = _json_post(conn, "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "bench"})
    body = {"session_id": session["session_id"], "sampling_session_seq_id": 0, "base_model": MODEL}
    return _json_post(conn, "create_sampling_session", body)["sampling_session_id"]


def _parse(buffer: bytes) -> Optional[Tuple[int, bytes, bytes, bytes]]:
    """(status, content type, body, rest) of the first whole response in ``buffer``, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buffer[:end].split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    length = int(headers.get(b"content-length", b"0"))
    body_start = end + 4
    if len(buffer) < body_start + length:
        return None
    status = int(lines[0].split()[1])
    return (
        status,
        headers.get(b"content-type", b""),
        buffer[body_start : body_start + length],
        buffer[body_start + length :],
    )


class _Loop:
    """One connection's closed loop, driven by a selector: asample, retrieve_future until the
    protobuf result, repeat. Non-blocking, so one client thread drives many connections."""

    def __init__(self, host: str, port: int, sampler: str, first_seq: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        common = b" HTTP/1.1\r\nHost: " + f"{host}:{port}".encode() + b"\r\nX-API-Key: " + API_KEY.encode()
        self.asample_head = b"POST /api/v1/asample" + common + b"\r\nContent-Type: application/json\r\n"
        self.retrieve_head = (
            b"POST /api/v1/retrieve_future" + common
            + b"\r\nAccept: application/x-protobuf\r\nContent-Type: application/json\r\n"
        )  # fmt: skip
        self.prefix = json.dumps({
            "num_samples": 1, "prompt": {"chunks": [{"tokens": PROMPT, "type": "encoded_text"}]},
            "sampling_params": {"max_tokens": 16, "seed": 1, "temperature": 1.0, "top_k": -1, "top_p": 1.0},
            "sampling_session_id": sampler,
        }, separators=(",", ":"))[:-1].encode() + b',"seq_id":'  # fmt: skip
        self.suffix = b',"prompt_logprobs":false,"topk_prompt_logprobs":0,"type":"sample"}'
        self.seq = first_seq
        self.request_id: Optional[bytes] = None
        self.buffer = b""
        self.done = 0

    def send_next(self) -> None:
        if self.request_id is None:
            head, body = self.asample_head, self.prefix + str(self.seq).encode() + self.suffix
        else:
            head, body = self.retrieve_head, b'{"request_id":"' + self.request_id + b'","allow_metadata_only":true}'
        self.sock.sendall(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    def on_readable(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.buffer += data
        parsed = _parse(self.buffer)
        if parsed is None:
            return
        status, content_type, body, self.buffer = parsed
        self._answer(status, content_type, body)
        self.send_next()

    def _answer(self, status: int, content_type: bytes, body: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"answered {status}: {body[:200]!r}")
        if self.request_id is None:
            self.request_id = json.loads(body)["request_id"].encode()
        elif content_type.startswith(b"application/x-protobuf"):
            self.request_id = None
            self.seq += 1
            self.done += 1
        elif b"try_again" not in body:
            raise RuntimeError(f"retrieve_future answered {body[:200]!r}")


def _drive(host: str, port: int, sampler: str, connections: int, deadline: float) -> int:
    """Run ``connections`` closed loops in this thread until ``deadline``; completed round trips."""
    loops = [_Loop(host, port, sampler, index * 10_000_000) for index in range(connections)]
    selector = selectors.DefaultSelector()
    for loop in loops:
        loop.send_next()
        selector.register(loop.sock, selectors.EVENT_READ, loop)
    try:
        while time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                key.data.on_readable()
    finally:
        selector.close()
        for loop in loops:
            loop.sock.close()
    return sum(loop.done for loop in loops)


def _client_process(url: str, connections: int, duration: float, cores: Optional[Set[int]], out: Any) -> None:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    host, port = url.split("//")[1].rsplit(":", 1)
    setup = RawConnection(host, int(port))
    sampler = _sampler(setup)
    setup.close()
    out.put(_drive(host, int(port), sampler, connections, time.monotonic() + duration))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pinning() -> Tuple[Optional[Set[int]], Optional[Set[int]]]:
    """(server cores, client cores): one core for the server, the rest for clients, if possible."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return {cores[0]}, set(cores[1:])


def _start_server(server_cores: Optional[Set[int]]) -> Tuple[subprocess.Popen, str]:
    def pin() -> None:
        if server_cores:
            os.sched_setaffinity(0, server_cores)

    return start_server(preexec_fn=pin)


def _one_run(url: str, args: argparse.Namespace, client_cores: Optional[Set[int]]) -> int:
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_client_process, args=(url, args.connections, args.duration, client_cores, out))
        for _ in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    total = sum(out.get(timeout=args.duration + 60) for _ in workers)
    for worker in workers:
        worker.join()
    return total


def _measure(
    url: str, pid: Optional[int], args: argparse.Namespace, client_cores: Optional[Set[int]]
) -> List[Dict[str, float]]:
    _one_run(url, argparse.Namespace(**{**vars(args), "duration": 1.0}), client_cores)  # warm-up
    runs = []
    for _ in range(args.runs):
        cpu_before = _cpu_seconds(pid) if pid else 0.0
        began = time.monotonic()
        total = _one_run(url, args, client_cores)
        wall = time.monotonic() - began
        cpu = (_cpu_seconds(pid) - cpu_before) if pid else float("nan")
        runs.append({"rate": total / args.duration, "server_cpu": cpu / wall, "per_cpu_s": total / cpu if cpu else 0.0})
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections per client process")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per timed run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs (the median is reported)")
    parser.add_argument("--url", help="measure an already running server (its API key must accept tml-bench)")
    args = parser.parse_args()
    server_cores, client_cores = _pinning()
    child, url, pid = None, args.url, None
    if url is None:
        child, url = _start_server(server_cores)
        pid = child.pid
    try:
        runs = _measure(url, pid, args, client_cores if child else None)
    finally:
        if child is not None:
            child.terminate()
            child.wait(timeout=30)
    _report(runs, args, server_cores)
    return 0


def _report(runs: List[Dict[str, float]], args: argparse.Namespace, server_cores: Optional[Set[int]]) -> None:
    rates = [run["rate"] for run in runs]
    median = statistics.median(rates)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    clients = f"{args.processes} processes x {args.connections} keep-alive connections"
    print(f"server: python -m tinkex.server --model {MODEL}, pinned to cores {sorted(server_cores or [])} of "
          f"{os.cpu_count()}; clients: {clients}")  # fmt: skip
    print(f"round trips/s (asample + retrieve_future), {args.runs} runs of {args.duration:g} s: "
          f"median {median:,.0f}  min {min(rates):,.0f}  max {max(rates):,.0f}")  # fmt: skip
    cpu = [run["server_cpu"] for run in runs]
    per_cpu = [run["per_cpu_s"] for run in runs]
    print(f"server CPU: median {statistics.median(cpu):.2f} cores busy; "
          f"median {statistics.median(per_cpu):,.0f} round trips per server CPU-second")  # fmt: skip
    verdict = "meets" if median >= GOAL else "misses"
    print(f"goal >= {GOAL:,.0f}/s on one core: {verdict}")


if __name__ == "__main__":
    sys.exit(main())
