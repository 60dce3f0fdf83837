"""lm-eval throughput: the example multiple-choice task at thousands of requests, futures vs one at a time.

Starts ``python -m tinkex.server`` with ``tinkex/ngram-small`` in its own process, with a
simulated decoding time per token (``--token-delay-ms``, 1000 by default: each scoring request
takes about a second, as a hosted model does) and room for every request at once. Builds a
copy of ``examples/lm_eval/python_mc.yaml`` over ``--docs`` documents (the 24 example questions
repeated; four loglikelihood requests each) and runs it through ``lm_eval.simple_evaluate``:

* ``futures``: a TinkexLM with ``max_in_flight=--in-flight``, all documents;
* ``one at a time``: a TinkexLM with ``max_in_flight=1`` over the first ``--sequential-docs``
  documents (sending thousands of one-second requests one by one would take an hour).

Runs alternate, ``--repeats`` times each; the medians of requests per second and their ratio are
printed. Every run's per-request log-likelihoods must equal the first run's on the same documents.

Usage:
    .venv/bin/python bench/lm_eval.py 2>/dev/null            # 2,000 requests, 1 s each (stderr: progress bars)
    .venv/bin/python bench/lm_eval.py --docs 250 --repeats 1 --token-delay-ms 200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _server import API_KEY, start_server

# This script's name would shadow the lm_eval package: once _server is in, drop bench/ from the path.
HERE = Path(__file__).resolve().parent
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != HERE]

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "lm_eval"
MODEL = "tinkex/ngram-small"
TASK = "tinkex_bench_mc"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=500, help="documents in the task (4 requests each)")
    parser.add_argument("--sequential-docs", type=int, default=8, help="documents for the one-at-a-time run")
    parser.add_argument("--in-flight", type=int, default=256, help="max_in_flight of the futures run")
    parser.add_argument("--token-delay-ms", type=float, default=1000.0, help="server decoding time per token")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each mode (medians are reported)")
    return parser


def _task_dir(docs: int) -> Path:
    """A task directory: the example loader, a copy of the example YAML, and ``docs`` documents."""
    where = Path(tempfile.mkdtemp(prefix="tinkex-bench-lm-eval-"))
    shutil.copy(EXAMPLES / "utils.py", where / "utils.py")
    yaml = (EXAMPLES / "python_mc.yaml").read_text()
    yaml = yaml.replace("task: tinkex_python_mc", f"task: {TASK}").replace("python_mc.jsonl", str(where / "docs.jsonl"))
    (where / "bench_mc.yaml").write_text(yaml)
    rows = (EXAMPLES / "python_mc.jsonl").read_text().splitlines()
    (where / "docs.jsonl").write_text("\n".join(rows[i % len(rows)] for i in range(docs)) + "\n")
    return where


def _run(url: str, tasks: Path, in_flight: int, docs: int) -> Dict[str, Any]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tinkex.contrib.lm_eval import TinkexLM

    with TinkexLM(base_model=MODEL, base_url=url, api_key=API_KEY, max_in_flight=in_flight) as lm:
        manager = TaskManager(include_path=str(tasks), include_defaults=False)
        started = time.perf_counter()
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=manager, limit=docs,
                                          log_samples=True, bootstrap_iters=0)
        elapsed = time.perf_counter() - started
        assert results is not None and not lm.failures, lm.failures
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    scores = [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]
    return {"requests": sum(len(s) for s in scores), "seconds": elapsed, "scores": scores,
            "acc": results["results"][TASK]["acc,none"]}


def _check_same(reference: List[List[float]], scores: List[List[float]]) -> None:
    for doc, (want, got) in enumerate(zip(reference, scores)):
        if any(abs(a - b) > 1e-6 for a, b in zip(want, got)):
            raise AssertionError(f"document {doc}: {got} differs from the first run's {want}")


def main() -> int:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("lm_eval", "lm-eval"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    tasks = _task_dir(args.docs)
    server, url = start_server(["--model", MODEL, "--token-delay-ms", str(args.token_delay_ms),
                                "--max-concurrent-generations", str(max(args.in_flight, 4) * 2)])
    runs: Dict[str, List[Dict[str, Any]]] = {"futures": [], "one at a time": []}
    try:
        _run(url, tasks, 4, 4)  # warm up: the model loaded, lm-eval's imports done
        for _ in range(args.repeats):
            runs["futures"].append(_run(url, tasks, args.in_flight, args.docs))
            runs["one at a time"].append(_run(url, tasks, 1, args.sequential_docs))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tasks, ignore_errors=True)
    reference = runs["futures"][0]["scores"]
    for run in runs["futures"] + runs["one at a time"]:
        _check_same(reference, run["scores"])
    _print(args, runs)
    return 0


def _print(args: argparse.Namespace, runs: Dict[str, List[Dict[str, Any]]]) -> None:
    print(f"lm-eval multiple choice on {MODEL}, token delay {args.token_delay_ms:g} ms, "
          f"{args.repeats} run(s) per mode (medians)")
    print(f"{'mode':<28}{'requests':>10}{'wall s':>10}{'requests/s':>12}")
    rates = {}
    for mode, results in runs.items():
        rate = statistics.median(r["requests"] / r["seconds"] for r in results)
        seconds = statistics.median(r["seconds"] for r in results)
        label = f"futures (max_in_flight={args.in_flight})" if mode == "futures" else mode
        print(f"{label:<28}{results[0]['requests']:>10}{seconds:>10.1f}{rate:>12.1f}")
        rates[mode] = rate
    print(f"speed-up: {rates['futures'] / rates['one at a time']:.0f}x; "
          f"accuracy {runs['futures'][0]['acc']:.4f} on {args.docs} documents")
    print(json.dumps({mode: round(rate, 2) for mode, rate in rates.items()}))


if __name__ == "__main__":
    sys.exit(main())
