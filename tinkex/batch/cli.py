"""``tinkex batch IN.jsonl OUT.jsonl``: sample a JSONL file of prompts, resumably.

Examples::

    $ tinkex batch prompts.jsonl out.jsonl --model tinkex/echo --local --max-tokens 16
    $ tinkex batch prompts.jsonl out.jsonl --model M --processes 4          # 4 worker processes
    $ tinkex batch prompts.jsonl out.jsonl --model M --dask-scheduler tcp://10.0.0.5:8786

Input lines are ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "tokens": [...]}`` with
optional per-line ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop`` and
``num_samples``. Output lines are ``{"id", "sequences": [{"text", "tokens", "logprobs",
"stop_reason"}]}`` or ``{"id", "error": {"type", "message", ...}}``; unusable input lines are
reported as ``{"id": null, "line": N, "error": {...}}``. Output lines come in completion order.
Re-running the same command skips every id already in OUT, so a crash or Ctrl-C loses nothing
and repeats nothing; prompts that failed for a transient reason (connection, timeout, server
error) get no line, so the re-run retries them.

Worker processes need the API key: ``--processes`` hands it to the workers this command starts;
Dask workers read ``TINKER_API_KEY`` from their environment unless ``--send-api-key`` (or
``--local``, whose key is a throwaway) sends it with the pickled client.

Exit codes: 0 every line has an output line; 1 an error, or prompts that failed transiently
(nothing written for them; re-run to retry); 2 bad usage; 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence, Type

import attrs

from ..service_client import ServiceClient
from ..types import SamplingParams
from ._run import BatchSummary, check_paths, run_batch

__all__ = ["CommandParts", "add_parser", "run"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


@attrs.frozen
class CommandParts:
    """What the ``tinkex`` command lends ``tinkex batch``, so this module never imports :mod:`tinkex.cli`.

    Attributes:
        parent: the parser holding the options every subcommand shares (``--debug``, ``--json``).
        option_groups: functions adding shared options to a parser (model, sampling, connection).
        sampling_params: the SamplingParams the sampling options describe.
        sampling_client: a SamplingClient for ``--model`` on a ServiceClient.
        local_server: the ``--local`` server (a context manager) for a list of models.
        error: the exception the command reports in one line (e.g. a missing extra).

    Example:
        >>> import argparse
        >>> parts = CommandParts(argparse.ArgumentParser(add_help=False), (), lambda a: None,
        ...                      lambda s, a: None, lambda models: None, RuntimeError)
        >>> parts.error.__name__
        'RuntimeError'
    """

    parent: argparse.ArgumentParser
    option_groups: Sequence[Callable[[argparse.ArgumentParser], None]]
    sampling_params: Callable[[argparse.Namespace], SamplingParams]
    sampling_client: Callable[[ServiceClient, argparse.Namespace], Any]
    local_server: Callable[[Sequence[str]], Any]
    error: Type[Exception]


def add_parser(subparsers: Any, parts: CommandParts) -> None:
    """Register ``batch`` on the ``tinkex`` command's subparsers; its handler is ``run(args, parts)``."""
    parser = subparsers.add_parser(
        "batch", parents=[parts.parent], help="sample every prompt of a JSONL file into another, resumably",
        description=__doc__.split("\n\n")[0], epilog="Line formats: see `pydoc tinkex.batch.cli`.",
    )
    parser.add_argument("input", metavar="IN.jsonl", help="prompts, one JSON object per line")
    parser.add_argument("output", metavar="OUT.jsonl", help="results are appended here; existing ids are skipped")
    for add_options in parts.option_groups:
        add_options(parser)
    scale = parser.add_argument_group("scale")
    scale.add_argument("--concurrency", type=_positive_int, metavar="N",
                       help="prompts in flight at once (default 256; with workers, two chunks per worker)")
    scale.add_argument("--processes", type=_positive_int, metavar="N", help="sample in N worker processes")
    scale.add_argument("--dask-scheduler", metavar="ADDRESS", help="sample on a Dask cluster (the dask extra)")
    scale.add_argument("--chunk-size", type=_positive_int, metavar="N",
                       help="prompts per task sent to a worker (default 128)")
    scale.add_argument("--send-api-key", action="store_true",
                       help="pickle the API key to Dask workers instead of reading their TINKER_API_KEY")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                       help="show progress even when stderr is not a terminal")
    shown.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       help="never show progress")
    parser.set_defaults(handler=lambda args, _out: run(args, parts))


def run(args: argparse.Namespace, parts: CommandParts) -> int:
    """Run ``tinkex batch`` from parsed arguments; errors propagate to the ``tinkex`` command."""
    if args.processes and args.dask_scheduler:
        print("tinkex batch: error: give --processes or --dask-scheduler, not both", file=sys.stderr)
        return EXIT_USAGE
    params = parts.sampling_params(args)
    check_paths(args.input, args.output)  # before any server or session starts
    send_key = bool(args.processes or args.local or (args.dask_scheduler and args.send_api_key))
    with _service(args, parts, send_key) as service, _executor(args, parts) as executor:
        client = parts.sampling_client(service, args)
        summary = run_batch(
            client, args.input, args.output, params, num_samples=args.num_samples, max_in_flight=args.concurrency,
            executor=executor, progress=args.progress, chunk_size=args.chunk_size, timeout=args.timeout,
            tokenizer=args.tokenizer,
        )
    _report(summary, args)
    return EXIT_OK if summary.deferred == 0 else EXIT_ERROR


@contextlib.contextmanager
def _service(args: argparse.Namespace, parts: CommandParts, pickle_api_key: bool) -> Iterator[ServiceClient]:
    """Like the other commands' service, but the key may travel with the pickled client."""
    with contextlib.ExitStack() as stack:
        api_key, base_url = None, args.base_url
        if args.local:
            models = [] if args.model.startswith("tinker://") else [args.model]
            server = stack.enter_context(parts.local_server(models))
            api_key, base_url = server.api_key, server.base_url
        yield stack.enter_context(ServiceClient(api_key=api_key, base_url=base_url, pickle_api_key=pickle_api_key))


@contextlib.contextmanager
def _executor(args: argparse.Namespace, parts: CommandParts) -> Iterator[Any]:
    if args.processes:
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads' locks
        with ProcessPoolExecutor(args.processes, mp_context=context, initializer=_ignore_sigint) as pool:
            try:
                yield pool
            except BaseException:
                _stop_workers(pool, context)
                raise
    elif args.dask_scheduler:
        try:
            from distributed import Client
        except ImportError as exc:
            raise parts.error(f"--dask-scheduler needs the dask extra ({exc.name} is missing): "
                           "pip install 'tinkex[dask]'") from None
        with Client(args.dask_scheduler) as client:
            yield client
    else:
        yield None


def _stop_workers(pool: ProcessPoolExecutor, context: Any) -> None:
    """On Ctrl-C or an error, end the workers this command started instead of letting their chunks finish."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in context.active_children():
        child.terminate()


def _ignore_sigint() -> None:
    """Workers leave Ctrl-C to the command, which cancels their pending chunks."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _report(summary: BatchSummary, args: argparse.Namespace) -> None:
    if args.json:
        record = {"output": args.output, "already_done": summary.already_done, "sampled": summary.sampled,
                  "failed": summary.failed, "invalid": summary.invalid, "deferred": summary.deferred}
        print(json.dumps(record), flush=True)
    else:
        print(f"{args.output}: {summary.sampled} sampled, {summary.failed} failed, {summary.invalid} invalid lines, "
              f"{summary.already_done} already done", flush=True)
    if summary.deferred:
        error = summary.last_deferred_error
        print(f"tinkex batch: {summary.deferred} prompts failed transiently and were not written (last: "
              f"{type(error).__name__}: {error}); re-run the same command to retry them", file=sys.stderr)
