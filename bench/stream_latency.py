"""Streaming latency: time to first chunk and the client's cost per chunk, beside the server's pacing.

Starts two local servers (``python -m tinkex.server --model tinkex/echo``) in their own
processes, so the client's CPU figures hold nothing of the server's:

* a paced one (``--token-delay-ms``, default 50): per stream, the time until ``sample_stream``
  returns (request sent, headers back), the time to the first chunk, and the gaps between
  chunks, printed next to the pacing the server was told to keep;
* an unpaced one: long streams as fast as the server writes them, for the client's CPU time
  and wall time per chunk. CPU time is ``time.process_time()`` (the process's CPU clock, all
  threads, sub-microsecond resolution) over tens of thousands of chunks per run, so the
  figure is far above the clock's resolution; ``os.times()`` would tick every 10 ms, more
  than a whole short stream costs.

It also parses an in-memory SSE body (no socket) to isolate the parser and decoder from the
network: tinkex's path (sseclient-py behind the line-ending normaliser, JSON decode,
incremental text) beside sseclient-py alone. Every figure is the median of several runs.

Usage:
    .venv/bin/python bench/stream_latency.py
    .venv/bin/python bench/stream_latency.py --runs 9 --token-delay-ms 20 --tokens 40 --long-streams 8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sseclient  # noqa: E402
from _server import API_KEY, MODEL, start_server  # noqa: E402

import tinkex  # noqa: E402
from tinkex import types  # noqa: E402
from tinkex._http.sse import decode_chunk, iter_events  # noqa: E402
from tinkex._sampling.stream import _Texts  # noqa: E402
from tinkex._wire.byte_tokenizer import ByteTokenizer  # noqa: E402

PROMPT = types.ModelInput.from_ints(list(b"The quick brown fox jumps over the lazy dog. "))


def cpu_seconds() -> float:
    return time.process_time()


def paced_run(client: Any, tokens: int) -> Dict[str, Any]:
    params = types.SamplingParams(max_tokens=tokens, seed=0)
    started = time.perf_counter()
    stream = client.sample_stream(PROMPT, params)
    opened = time.perf_counter() - started
    arrivals = [time.perf_counter() - started for _chunk in stream]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:tokens])]
    return {"open": opened, "first": arrivals[0], "total": arrivals[-1], "gap": statistics.median(gaps)}


def long_run(client: Any, tokens: int, streams: int) -> Dict[str, float]:
    params = types.SamplingParams(max_tokens=tokens, seed=0)
    cpu, wall = cpu_seconds(), time.perf_counter()
    count = sum(1 for _ in range(streams) for _chunk in client.sample_stream(PROMPT, params))
    spent = cpu_seconds() - cpu
    return {"cpu_us": spent / count * 1e6, "wall_us": (time.perf_counter() - wall) / count * 1e6,
            "chunks": count, "cpu_ms": spent * 1e3}


def sse_body(tokens: int) -> bytes:
    text = "The quick brown fox — naïve café 日本. " * (tokens // 30 + 1)
    ids = list(text.encode())[:tokens]
    events = [
        "event: token\ndata: " + json.dumps({"index": i, "token_id": t, "token": None, "logprob": -5.55,
                                             "sequence_index": 0}, separators=(",", ":")) + "\n\n"
        for i, t in enumerate(ids)
    ]
    events.append(f'event: done\ndata: {{"finish_reason":"length","total_tokens":{tokens},"sequence_index":0}}\n\n')
    return "".join(events).encode()


def parse_only(body: bytes, tokens: int) -> Dict[str, float]:
    parts = [body[i:i + 1400] for i in range(0, len(body), 1400)]  # one TCP segment's worth per read
    started = time.perf_counter()
    texts = _Texts(ByteTokenizer())
    for event in iter_events(parts):
        chunk = decode_chunk(event)
        if chunk is not None:
            texts.apply(chunk)
    ours = (time.perf_counter() - started) / (tokens + 1) * 1e6
    started = time.perf_counter()
    for event in sseclient.SSEClient(iter(parts)).events():
        json.loads(event.data)
    stock = (time.perf_counter() - started) / (tokens + 1) * 1e6
    return {"ours_us": ours, "stock_us": stock}


def median_of(runs: List[Dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (the median is reported)")
    parser.add_argument("--token-delay-ms", type=float, default=50.0, help="the paced server's time per token")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per paced stream")
    parser.add_argument("--long-tokens", type=int, default=8000,
                        help="tokens per unpaced stream (the echo model's context is 8192)")
    parser.add_argument("--long-streams", type=int, default=5, help="unpaced streams per timed run")
    args = parser.parse_args()
    paced_server, paced_url = start_server(("--token-delay-ms", str(args.token_delay_ms)))
    fast_server, fast_url = start_server(("--token-delay-ms", "0.0"))
    try:
        with tinkex.ServiceClient(api_key=API_KEY, base_url=paced_url) as paced_service, \
                tinkex.ServiceClient(api_key=API_KEY, base_url=fast_url) as fast_service:
            paced = paced_service.create_sampling_client(base_model=MODEL)
            fast = fast_service.create_sampling_client(base_model=MODEL)
            paced_run(paced, args.tokens), long_run(fast, args.long_tokens, 1)  # warm-up
            paced_runs = [paced_run(paced, args.tokens) for _ in range(args.runs)]
            long_runs = [long_run(fast, args.long_tokens, args.long_streams) for _ in range(args.runs)]
    finally:
        for child in (paced_server, fast_server):
            child.terminate()
            child.wait(timeout=30)
    body = sse_body(args.long_tokens)
    parse_runs = [parse_only(body, args.long_tokens) for _ in range(args.runs)]
    report(args, paced_runs, long_runs, parse_runs)
    return 0


def report(args: argparse.Namespace, paced: List[Dict[str, Any]], long: List[Dict[str, float]],
           parse: List[Dict[str, float]]) -> None:
    delay = args.token_delay_ms
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, server: python -m tinkex.server "
          f"--model {MODEL} in its own process; medians of {args.runs} runs")  # fmt: skip
    print(f"paced server ({delay:g} ms/token, {args.tokens} tokens):")
    first = median_of(paced, "first") * 1e3
    print(f"  sample_stream() returned after       {median_of(paced, 'open') * 1e3:8.2f} ms")
    print(f"  first chunk after                    {first:8.2f} ms   (server pacing: {delay:g} ms; "
          f"the rest is request, scheduling and delivery: {first - delay:.2f} ms)")  # fmt: skip
    print(f"  median gap between chunks            {median_of(paced, 'gap') * 1e3:8.2f} ms   (server pacing: "
          f"{delay:g} ms)")  # fmt: skip
    print(f"  whole stream                         {median_of(paced, 'total') * 1e3:8.2f} ms   "
          f"(server pacing: {args.tokens * delay:g} ms)")  # fmt: skip
    print(f"unpaced server ({args.long_streams} streams of {args.long_tokens} tokens per run, "
          f"{median_of(long, 'chunks'):.0f} chunks):")
    print(f"  client CPU per chunk                 {median_of(long, 'cpu_us'):8.2f} us   "
          f"(time.process_time(): {median_of(long, 'cpu_ms'):.0f} ms of CPU per run)")
    print(f"  wall time per chunk                  {median_of(long, 'wall_us'):8.2f} us")
    print(f"parsing only, in memory ({args.long_tokens} events):")
    print(f"  tinkex (normaliser + sseclient-py + decode + text)  {median_of(parse, 'ours_us'):6.2f} us/chunk")
    print(f"  sseclient-py alone + json.loads                     {median_of(parse, 'stock_us'):6.2f} us/chunk")


if __name__ == "__main__":
    sys.exit(main())
