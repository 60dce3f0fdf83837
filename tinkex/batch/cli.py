"""``tinkex batch IN.jsonl OUT.jsonl``: sample a JSONL file of prompts, resumably.

The command's help (``tinkex batch --help``) documents the line formats and exit codes; it is
:data:`HELP` below, plain text so that it reads the same in a terminal and in the README.
This module never imports :mod:`tinkex.cli`: the ``tinkex`` command lends it the options and
helpers the subcommands share (:class:`CommandParts`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import shlex
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence, Type

import attrs

from .._help import DefaultsHelpFormatter
from ..service_client import ServiceClient
from ..types import SamplingParams
from ._exec import WorkerSetupError
from ._input import DEFAULT_MAX_LINE_BYTES
from ._pools import exit_with_parent
from ._run import DEFAULT_MAX_REQUEST_BYTES, BatchSummary, check_paths, run_batch

__all__ = ["CommandParts", "add_parser", "run", "HELP"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_ERROR_LINES, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_KEY_PLACEHOLDER = "<API key>"

DESCRIPTION = """\
Sample every prompt of a JSONL file into another JSONL file, resumably: re-running the same
command skips every id already in OUT, so a crash or Ctrl-C loses nothing and repeats nothing."""

HELP = """\
input lines (IN: one JSON object per line; blank lines are skipped):
  {"id": "q1", "prompt": "The capital of France is"}
  {"id": 2, "tokens": [72, 105], "max_tokens": 8, "temperature": 0.7, "num_samples": 2}

  id           a string or an integer, unique in the file ("1" and 1 are different ids)
  prompt       the prompt text, encoded with the model's tokenizer (no chat template)
  tokens       token ids instead of text; give exactly one of prompt and tokens
  max_tokens, temperature, top_p, top_k, seed, stop, num_samples
               optional: override the command's options for this line
  Other keys are ignored. IN may be a file, a pipe or a FIFO (e.g. /dev/stdin); it is read once.

output lines (OUT: appended in completion order):
  {"id": "q1", "sequences": [{"text": "...", "tokens": [...], "logprobs": [...], "stop_reason": "length"}]}
  {"id": 2, "error": {"type": "BadRequestError", "message": "...", "status_code": 400}}
  {"id": null, "line": 7, "error": {"type": "DecodeError", "message": "line 7: invalid JSON: ..."}}

  A line that cannot be used, a prompt the server refuses (400, 413, 422) or one whose request
  would be over --max-request-bytes gets an error line; a re-run skips it like any other
  (delete its line from OUT to redo it). A prompt that failed for a transient reason
  (connection, timeout, server error) gets no line: re-run to retry it.
  OUT must be new or the output of an earlier tinkex batch run; any other file (or a device or
  FIFO) is refused and left as it was.

workers:
  --processes N hands the API key to the N worker processes it starts. Dask workers read
  TINKER_API_KEY from their own environment unless --send-api-key (or --local, whose key is a
  throwaway) sends it with the pickled client.

exit codes:
  0    every line of IN has a sampled line in OUT
  1    an error, or prompts that failed transiently (nothing written for them; re-run to retry)
  2    bad usage
  3    finished, but some lines are error lines (invalid input, or prompts the server refused)
  130  interrupted by Ctrl-C (re-run the same command to resume)

examples:
  tinkex batch examples/batch_prompts.jsonl out.jsonl --local --model tinkex/echo --max-tokens 8
  tinkex batch prompts.jsonl out.jsonl --model M --processes 4
  cat prompts.jsonl | tinkex batch /dev/stdin out.jsonl --model M --progress"""


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_parser(subparsers: Any, parts: CommandParts) -> None:
    """Register ``batch`` on the ``tinkex`` command's subparsers; its handler is ``run(args, parts)``."""
    parser = subparsers.add_parser(
        "batch", parents=[parts.parent], help="sample every prompt of a JSONL file into another, resumably",
        description=DESCRIPTION, epilog=HELP, formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("input", metavar="IN.jsonl", help="prompts, one JSON object per line (format below)")
    parser.add_argument("output", metavar="OUT.jsonl", help="results are appended here; existing ids are skipped")
    for add_options in parts.option_groups:
        add_options(parser)
    _add_scale_options(parser)
    _add_file_options(parser)
    parser.set_defaults(handler=lambda args, _out: run(args, parts))


def _add_scale_options(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scale")
    scale.add_argument("--concurrency", type=_positive_int, metavar="N",
                       help="prompts in flight at once (default 256; with workers, two chunks per worker)")
    scale.add_argument("--processes", type=_positive_int, metavar="N", help="sample in N worker processes")
    scale.add_argument("--dask-scheduler", metavar="ADDRESS", help="sample on a Dask cluster (the dask extra)")
    scale.add_argument("--chunk-size", type=_positive_int, metavar="N",
                       help="prompts per task sent to a worker (default 128)")
    scale.add_argument("--send-api-key", action="store_true",
                       help="pickle the API key to Dask workers instead of reading their TINKER_API_KEY")


def _add_file_options(parser: argparse.ArgumentParser) -> None:
    files = parser.add_argument_group("files and progress")
    files.add_argument("--max-line-bytes", type=_positive_int, default=DEFAULT_MAX_LINE_BYTES, metavar="N",
                       help="longer input lines become error lines, unread")
    files.add_argument("--max-request-bytes", type=_positive_int, default=DEFAULT_MAX_REQUEST_BYTES, metavar="N",
                       help="prompts whose request would be larger get an error line, unsent "
                            f"(default: {DEFAULT_MAX_REQUEST_BYTES}, the local server's limit)")
    shown = files.add_mutually_exclusive_group()
    shown.add_argument("--progress", dest="progress", action="store_const", const=True, default=None,
                       help="show progress even when stderr is not a terminal (default: only on a terminal)")
    shown.add_argument("--no-progress", dest="progress", action="store_const", const=False,
                       help="never show progress")


def run(args: argparse.Namespace, parts: CommandParts) -> int:
    """Run ``tinkex batch`` from parsed arguments; errors propagate to the ``tinkex`` command."""
    if args.processes and args.dask_scheduler:
        print("tinkex batch: error: give --processes or --dask-scheduler, not both", file=sys.stderr)
        return EXIT_USAGE
    params = parts.sampling_params(args)
    check_paths(args.input, args.output)  # before any server or session starts
    try:
        summary = _run(args, parts, params)
    except KeyboardInterrupt:
        print(f"tinkex batch: interrupted; every line written to {args.output} is kept. Resume with the same "
              f"command:\n  {_same_command()}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except WorkerSetupError as exc:
        if exc.field != "api_key" or not args.dask_scheduler:
            raise
        raise parts.error("the Dask workers have no API key: pass --send-api-key to send yours with the client, or "
                          "set TINKER_API_KEY in the workers' environment (not needed with --local)") from None
    _report(summary, args)
    if summary.deferred:
        return EXIT_ERROR
    return EXIT_ERROR_LINES if summary.invalid or summary.failed else EXIT_OK


def _run(args: argparse.Namespace, parts: CommandParts, params: SamplingParams) -> BatchSummary:
    send_key = bool(args.processes or args.local or (args.dask_scheduler and args.send_api_key))
    with _service(args, parts, send_key) as service, _executor(args, parts) as executor:
        client = parts.sampling_client(service, args)
        return run_batch(
            client, args.input, args.output, params, num_samples=args.num_samples, max_in_flight=args.concurrency,
            executor=executor, progress=args.progress, chunk_size=args.chunk_size, timeout=args.timeout,
            tokenizer=args.tokenizer, max_line_bytes=args.max_line_bytes, max_request_bytes=args.max_request_bytes,
        )


def _same_command() -> str:
    """The command line that was run, for the resume hint (``tinkex ...`` also under ``python -m tinkex``).

    An ``--api-key`` value is replaced by ``<API key>``: the hint goes to a terminal or a log.
    """
    arguments = sys.argv[1:]
    if "batch" not in arguments:  # called as a function, not from a shell
        return "the same tinkex batch command"
    shown = []
    for index, argument in enumerate(arguments):
        if index and arguments[index - 1] == "--api-key":
            argument = _KEY_PLACEHOLDER
        elif argument.startswith("--api-key="):
            argument = f"--api-key={_KEY_PLACEHOLDER}"
        shown.append(argument)
    return shlex.join(["tinkex", *shown])


@contextlib.contextmanager
def _service(args: argparse.Namespace, parts: CommandParts, pickle_api_key: bool) -> Iterator[ServiceClient]:
    """Like the other commands' service, but the key may travel with the pickled client."""
    with contextlib.ExitStack() as stack:
        api_key, base_url = getattr(args, "api_key", None), args.base_url
        if args.local:
            models = [] if args.model.startswith("tinker://") else [args.model]
            server = stack.enter_context(parts.local_server(models))
            api_key, base_url = server.api_key, server.base_url
        yield stack.enter_context(ServiceClient(api_key=api_key, base_url=base_url, pickle_api_key=pickle_api_key,
                                                max_retries=args.max_retries))


@contextlib.contextmanager
def _executor(args: argparse.Namespace, parts: CommandParts) -> Iterator[Any]:
    if args.processes:
        context = multiprocessing.get_context("spawn")  # fork would copy this process's threads' locks
        with ProcessPoolExecutor(args.processes, mp_context=context, initializer=_start_worker) as pool:
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
        with Client(args.dask_scheduler) as client:  # type: ignore[no-untyped-call, unused-ignore]  # distributed leaves it unannotated (an error only under --strict)
            yield client
    else:
        yield None


def _stop_workers(pool: ProcessPoolExecutor, context: Any) -> None:
    """On Ctrl-C or an error, end the workers this command started instead of letting their chunks finish."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in context.active_children():
        child.terminate()


def _start_worker() -> None:
    """Workers leave Ctrl-C to the command, which cancels their chunks, and exit when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()


def _report(summary: BatchSummary, args: argparse.Namespace) -> None:
    if args.json:
        record = {"output": args.output, "already_done": summary.already_done, "sampled": summary.sampled,
                  "failed": summary.failed, "invalid": summary.invalid, "deferred": summary.deferred}
        print(json.dumps(record), flush=True)
    else:
        print(f"{args.output}: {summary.sampled} sampled, {summary.failed} failed, {summary.invalid} invalid lines, "
              f"{summary.already_done} already done", flush=True)
    if summary.invalid or summary.failed:
        first = _one_line(summary.first_error)
        print(f"tinkex batch: {_error_lines(summary)} written to {args.output} (first: {first})", file=sys.stderr)
    if summary.deferred:
        print(f"tinkex batch: {summary.deferred} prompts failed transiently and were not written (last: "
              f"{_one_line(summary.last_deferred_error)}); re-run the same command to retry them", file=sys.stderr)


def _error_lines(summary: BatchSummary) -> str:
    parts = []
    if summary.invalid:
        parts.append(f"{summary.invalid} invalid input line{'s' * (summary.invalid != 1)}")
    if summary.failed:
        parts.append(f"{summary.failed} failed prompt{'s' * (summary.failed != 1)}")
    return " and ".join(parts) + ": error lines"


def _one_line(error: Optional[BaseException]) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split()) if error is not None else "unknown"
