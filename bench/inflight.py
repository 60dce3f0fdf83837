"""Samples per second with thousands in flight against a server at a realistic latency.

A sample on the real service takes seconds, so a batch's throughput is set by how many
samples the client keeps in flight, not by its CPU per call. This starts the local server
with the echo model decoding at ``--token-delay-ms`` per token (``--max-tokens`` tokens: 2 s
per sample by default) and room for every generation at once, then for each client --
tinkex in default mode, tinkex in poller mode (the server announcing
``sample_use_retrieve_futures``) and the official SDK from its side venv -- keeps 64, 256,
1,000 and 2,000 samples in flight (closed loop, ``--rounds`` × in-flight samples each) and
prints samples/s beside the ideal (in flight ÷ latency), p50/p99 latency, peak threads, peak
RSS and client CPU per sample. Each client runs in its own process against a fresh server.
With matplotlib (the ``bench`` extra) it also draws samples/s against in flight to
``docs/inflight.png``.

Usage:
    .venv/bin/python bench/inflight.py                      # all clients, 64,256,1000,2000
    .venv/bin/python bench/inflight.py --levels 2000 --clients tinkex,official
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from _server import API_KEY, MODEL, REPO, official_python, start_server

HERE = Path(__file__).resolve().parent
CLIENTS = {
    "tinkex": ("tinkex", []),
    "tinkex-poller": ("tinkex", ["--client-config", "sample_use_retrieve_futures=true"]),
    "official": ("official", []),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="64,256,1000,2000", help="samples in flight (comma separated)")
    parser.add_argument("--clients", default="tinkex,tinkex-poller,official", help=f"of {', '.join(CLIENTS)}")
    parser.add_argument("--token-delay-ms", type=float, default=100.0, help="server decoding time per token")
    parser.add_argument("--max-tokens", type=int, default=20, help="tokens per sample")
    parser.add_argument("--rounds", type=int, default=2, help="samples per level = rounds x in flight")
    parser.add_argument("--min-samples", type=int, default=256, help="at least this many samples per level")
    parser.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    parser.add_argument("--plot", default=str(REPO / "docs" / "inflight.png"), help="draw the plot here ('' skips)")
    return parser


def _python_for(sdk: str) -> Optional[Path]:
    return Path(sys.executable) if sdk == "tinkex" else official_python()


def run_client(name: str, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    sdk, server_args = CLIENTS[name]
    python = _python_for(sdk)
    if python is None:
        return None
    server, url = start_server(["--token-delay-ms", str(args.token_delay_ms), "--max-concurrent-generations",
                                "10000", *server_args])
    try:
        spec = {"sdk": sdk, "base_url": url, "api_key": API_KEY, "model": MODEL,
                "prompt": [(17 * i + 3) % 256 for i in range(32)],
                "sampling_params": {"max_tokens": args.max_tokens, "seed": 7, "temperature": 1.0},
                "levels": [int(x) for x in args.levels.split(",")], "rounds": args.rounds,
                "min_samples": args.min_samples}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "PYTHON"))}
        done = subprocess.run([str(python), str(HERE / "_inflight_client.py"), json.dumps(spec)], cwd=HERE,
                              capture_output=True, text=True, env=env)
    finally:
        server.terminate()
        server.wait(30)
    if done.returncode != 0:
        print(f"# {name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    figures: Dict[str, Any] = json.loads(done.stdout)
    figures["name"] = name
    return figures


def report(results: List[Dict[str, Any]], latency_s: float) -> None:
    print(f"{'client':15} {'in flight':>9} {'samples/s':>10} {'ideal':>7} {'p50 s':>7} {'p99 s':>7} "
          f"{'threads':>8} {'RSS MB':>8} {'CPU ms/sample':>14} {'errors':>7}")
    for result in results:
        for level in result["levels"]:
            ideal = level["in_flight"] / latency_s
            print(f"{result['name']:15} {level['in_flight']:9d} {level['samples_per_s']:10.1f} {ideal:7.0f} "
                  f"{level['p50_s']:7.2f} {level['p99_s']:7.2f} {level['threads_peak']:8d} "
                  f"{level['rss_mb_peak']:8.1f} {level['cpu_ms_per_sample']:14.2f} {level['errors']:7d}")
    by_name = {r["name"]: {lv["in_flight"]: lv["samples_per_s"] for lv in r["levels"]} for r in results}
    official = by_name.get("official", {})
    for name, rates in by_name.items():
        if name != "official" and official:
            ratios = ", ".join(f"{n}: {rate / official[n]:.2f}x" for n, rate in rates.items() if official.get(n))
            print(f"# {name} / official samples/s: {ratios}")


def plot(results: List[Dict[str, Any]], latency_s: float, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# no plot: matplotlib is not installed (pip install 'tinkex[bench]')", file=sys.stderr)
        return
    figure, axes = plt.subplots(figsize=(7, 4.5))
    levels = sorted({lv["in_flight"] for r in results for lv in r["levels"]})
    axes.plot(levels, [n / latency_s for n in levels], "k--", label="ideal (in flight / latency)")
    for result in results:
        points = sorted((lv["in_flight"], lv["samples_per_s"]) for lv in result["levels"])
        axes.plot([p[0] for p in points], [p[1] for p in points], "o-", label=result["client"] + (
            " (poller mode)" if result["name"] == "tinkex-poller" else ""))
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("samples in flight")
    axes.set_ylabel("samples / s")
    axes.set_title(f"Throughput at {latency_s:.1f} s per sample (local server, echo model)")
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    print(f"# plot written to {path}")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    latency_s = args.token_delay_ms * args.max_tokens / 1000.0
    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, {args.max_tokens} tokens x "
          f"{args.token_delay_ms:g} ms = {latency_s:.1f} s per sample; {args.rounds} x in-flight samples per level")
    results = [r for r in (run_client(name, args) for name in args.clients.split(",")) if r is not None]
    report(results, latency_s)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.plot:
        plot(results, latency_s, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
