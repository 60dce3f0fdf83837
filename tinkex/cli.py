"""The ``tinkex`` command: sample, score and list models from a shell; ``tinkex serve`` runs a local server.

Examples::

    $ tinkex sample "The Python language" --local --max-tokens 40
    $ tinkex sample "Once upon a time" --model tinkex/ngram-small --local --stream
    $ tinkex logprobs "import this" --model tinkex/ngram-small --local --json
    $ tinkex models --local
    $ tinkex serve --port 8000                      # then, elsewhere:
    $ TINKER_BASE_URL=http://127.0.0.1:8000 TINKER_API_KEY=tml-local tinkex sample "Hi" --model tinkex/echo

``--local`` starts a server inside the command, so it needs no key and no running server;
otherwise ``TINKER_API_KEY`` and ``TINKER_BASE_URL`` (or ``--base-url``) say where to go.
Output is text, or JSON with ``--json`` (one object per line when streaming).

Exit codes: 0 success; 1 an error (one line on stderr, with the request id when there is one;
``--debug`` adds the traceback and debug logging); 2 bad usage; 130 interrupted by Ctrl-C
(in-flight work is cancelled and the session closed first).

``tinkex batch`` lives in :mod:`tinkex.batch.cli`; this module lends it the shared options and
helpers (:class:`tinkex.batch.cli.CommandParts`), so the batch command never imports this one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Sequence, TextIO

from ._cli import describe, emit, print_response, stream_chunks
from ._config import __version__
from ._help import DefaultsHelpFormatter
from ._logging import apply_log_level
from .batch import cli as batch_cli
from .errors import (
    TinkexError,
    ValidationError,
)
from .sampling_client import SamplingClient
from .service_client import ServiceClient
from .tokenizers import Tokenizer, get_tokenizer
from .types import ModelInput, SamplingParams

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = ["main", "build_parser", "add_connection_arguments", "open_service", "CLIError"]

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
LOCAL_DEFAULT_MODEL = "tinkex/ngram-small"
CLI_MAX_RETRIES = 3  # an unreachable server is reported in seconds, not after the library's minute of retries
PROTOCOL_REFERENCE = "0.38.0"  # the official tinker SDK version protocol.md was checked against


class CLIError(Exception):
    """A problem the command reports in one line (exit code 1), e.g. a missing optional extra."""


# ---------------------------------------------------------------- parser


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--local``, ``--base-url``, ``--api-key``, ``--timeout`` and ``--max-retries`` (what
    :func:`open_service` reads)."""
    group = parser.add_argument_group("connection")
    group.add_argument("--local", action="store_true",
                       help="start a local server inside this command (no key or server needed)")
    group.add_argument("--base-url", metavar="URL",
                       help="service URL (default: $TINKER_BASE_URL, else the official one)")
    group.add_argument("--api-key", metavar="KEY",
                       help="API key (default: $TINKER_API_KEY, which keeps it out of the process list)")
    group.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                       help="deadline for each call, polling included (default: none)")
    group.add_argument("--max-retries", type=_non_negative_int, default=CLI_MAX_RETRIES, metavar="N",
                       help="HTTP-layer retries of set-up calls (the library itself makes 10)")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="NAME", help=(
        f"base model, or a tinker:// checkpoint path (default with --local: {LOCAL_DEFAULT_MODEL})"))
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                        help="tokenizer to use instead of the model's (a name or a tokenizer.json path)")


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sampling")
    group.add_argument("--max-tokens", type=int, default=100, metavar="N", help="tokens per sample")
    group.add_argument("--temperature", type=float, default=1.0, metavar="T", help="0 is greedy")
    group.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus mass in (0, 1]")
    group.add_argument("--top-k", type=int, default=-1, metavar="K", help="-1 for no limit")
    group.add_argument("--seed", type=int, metavar="N", help="same seed, same sample (default: a random one)")
    group.add_argument("--stop", action="append", metavar="TEXT", help="stop string, repeatable")
    group.add_argument("--num-samples", type=_positive_int, default=1, metavar="N", help="sequences to sample")


def _common_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a subcommand's default from overwriting a --debug given before it.
    parent.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logging")
    parent.add_argument("--json", action="store_true", help="machine-readable output")
    return parent


def _version_text() -> str:
    python = platform.python_version()
    return f"tinkex {__version__} (Python {python}; wire protocol of the tinker SDK {PROTOCOL_REFERENCE})"


def build_parser() -> argparse.ArgumentParser:
    """The ``tinkex`` argument parser (``serve`` is listed here but handled by the server's own parser)."""
    parser = argparse.ArgumentParser(
        prog="tinkex", description="Sample from Tinker models (or the local server) from the command line.",
        epilog="Environment: TINKER_API_KEY, TINKER_BASE_URL, TINKER_LOG, TINKEX_TOKENIZER_PATH.",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
    parser.add_argument("--version", action="version", version=_version_text())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    parent = _common_parent()
    commands.add_parser("serve", help="run the local Tinker-compatible server (see `tinkex serve --help`)",
                        add_help=False)
    _add_commands(commands, parent)
    commands.add_parser("eval", help="run lm-evaluation-harness on a Tinker model (`tinkex eval --help`)",
                        add_help=False)
    _register_batch(commands)
    for command in commands.choices.values():
        if command.formatter_class is argparse.HelpFormatter:  # a subcommand that chose none shows defaults too
            command.formatter_class = DefaultsHelpFormatter
        command.set_defaults(command_parser=command)  # so usage errors print the subcommand's usage
    return parser


def _add_commands(commands: Any, parent: argparse.ArgumentParser) -> None:
    formatter = DefaultsHelpFormatter
    sample = commands.add_parser("sample", parents=[parent], help="sample a completion of PROMPT",
                                 formatter_class=formatter)
    sample.add_argument("prompt", help="the prompt text (no chat template is applied)")
    _add_model_arguments(sample)
    _add_sampling_arguments(sample)
    sample.add_argument("--stream", action="store_true", help="print the text as it is generated")
    add_connection_arguments(sample)
    sample.set_defaults(handler=_run_sample)
    scores = commands.add_parser("logprobs", parents=[parent], help="score TEXT: the logprob of every token",
                                 formatter_class=formatter)
    scores.add_argument("text", help="the text to score")
    _add_model_arguments(scores)
    add_connection_arguments(scores)
    scores.set_defaults(handler=_run_logprobs)
    models = commands.add_parser("models", parents=[parent], help="list the models the service offers",
                                 formatter_class=formatter)
    add_connection_arguments(models)
    models.set_defaults(handler=_run_models)
    version = commands.add_parser("version", parents=[parent], help="print the tinkex version",
                                  formatter_class=formatter)
    version.set_defaults(handler=_run_version)


def _register_batch(commands: Any) -> None:
    """``tinkex batch``, given the options and helpers it shares with the other commands."""
    options = (_add_model_arguments, _add_sampling_arguments, add_connection_arguments)
    batch_cli.add_parser(commands, batch_cli.CommandParts(
        _common_parent(), options, _sampling_params, _sampling_client, _local_server, CLIError))


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors argparse cannot see alone; ``parser`` is the subcommand's, so its usage is shown."""
    if hasattr(args, "model") and args.model is None:
        if not args.local:
            parser.error(f"--model is required (or pass --local to use {LOCAL_DEFAULT_MODEL})")
        args.model = LOCAL_DEFAULT_MODEL
    if getattr(args, "stream", False) and args.num_samples > 1 and not args.json:
        parser.error("--stream prints one sequence as text; add --json to stream several")
    if hasattr(args, "max_tokens"):
        try:
            _sampling_params(args)
        except ValidationError as exc:  # the library's own check, reported as the option it came from
            parser.error(f"argument {_option_name(exc.field)}: {exc}")


def _option_name(field: Optional[str]) -> str:
    return "--" + (field or "value").replace("_", "-")


# ---------------------------------------------------------------- connection


@contextlib.contextmanager
def open_service(args: argparse.Namespace, models: Optional[Sequence[str]] = None) -> Iterator[ServiceClient]:
    """A ServiceClient for the command's connection arguments, closed (and any local server stopped) on exit.

    Args:
        args: parsed arguments with ``local``, ``base_url`` and optionally ``max_retries``.
        models: the models a ``--local`` server should load (default: every local model).
    """
    with contextlib.ExitStack() as stack:
        api_key, base_url = getattr(args, "api_key", None), args.base_url
        if args.local:
            server = stack.enter_context(_local_server(models))
            api_key, base_url = server.api_key, server.base_url
        retries = getattr(args, "max_retries", None)
        yield stack.enter_context(ServiceClient(api_key=api_key, base_url=base_url, max_retries=retries))


def _local_server(models: Optional[Sequence[str]]) -> LocalServer:
    try:
        from .server import LocalServer
    except ImportError as exc:
        raise CLIError(f"--local needs the server extra ({exc.name} is missing): "
                       "pip install 'tinkex[server]'") from None
    return LocalServer(models=list(models)) if models else LocalServer()


def _local_models(args: argparse.Namespace) -> Optional[List[str]]:
    """Only the model asked for, so ``--model tinkex/echo --local`` does not train the n-gram model."""
    model = getattr(args, "model", None)
    return [model] if model and args.local and not model.startswith("tinker://") else None


def _sampling_client(service: ServiceClient, args: argparse.Namespace) -> SamplingClient:
    if args.model.startswith("tinker://"):
        return service.create_sampling_client(model_path=args.model)
    return service.create_sampling_client(base_model=args.model)


def _tokenizer(client: SamplingClient, args: argparse.Namespace) -> Tokenizer:
    return get_tokenizer(args.tokenizer) if args.tokenizer else client.get_tokenizer()


# ---------------------------------------------------------------- commands


def _sampling_params(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(max_tokens=args.max_tokens, seed=args.seed, stop=args.stop, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p)


def _run_sample(args: argparse.Namespace, out: TextIO) -> int:
    params = _sampling_params(args)
    with open_service(args, _local_models(args)) as service:
        client = _sampling_client(service, args)
        tokenizer = _tokenizer(client, args)
        prompt = ModelInput.from_text(args.prompt, tokenizer=tokenizer)
        if args.stream:
            chunks = client.sample_stream(prompt, params, args.num_samples, timeout=args.timeout)
            stream_chunks(chunks, tokenizer, args, out)
            return EXIT_OK
        response = client.sample(prompt, args.num_samples, params, timeout=args.timeout).result()
    print_response(response, tokenizer, args, out)
    return EXIT_OK


def _run_logprobs(args: argparse.Namespace, out: TextIO) -> int:
    with open_service(args, _local_models(args)) as service:
        client = _sampling_client(service, args)
        tokenizer = _tokenizer(client, args)
        tokens = tokenizer.encode(args.text)
        logprobs = client.compute_logprobs(ModelInput.from_ints(tokens), timeout=args.timeout).result()
    scored = [value for value in logprobs if value is not None]
    total = sum(scored)
    if args.json:
        emit({"model": args.model, "text": args.text, "tokens": tokens, "logprobs": logprobs, "total": total}, out)
        return EXIT_OK
    out.write(f"{'pos':>5} {'token':>7}  {'text':<14} logprob\n")
    for position, (token, value) in enumerate(zip(tokens, logprobs)):
        shown = "-" if value is None else f"{value:.4f}"
        out.write(f"{position:>5} {token:>7}  {tokenizer.decode([token])!r:<14} {shown}\n")
    mean = total / len(scored) if scored else float("nan")
    out.write(f"total {total:.4f} over {len(scored)} scored tokens (mean {mean:.4f})\n")
    out.flush()
    return EXIT_OK


def _run_models(args: argparse.Namespace, out: TextIO) -> int:
    with open_service(args) as service:
        capabilities = service.get_server_capabilities()
    if args.json:
        emit(capabilities.to_json(), out)
        return EXIT_OK
    for model in capabilities.supported_models:
        context = f"context {model.max_context_length}" if model.max_context_length else ""
        tokenizer = f"tokenizer {model.tokenizer_id}" if model.tokenizer_id else ""
        out.write("  ".join(part for part in (f"{model.model_name:<28}", context, tokenizer) if part).rstrip() + "\n")
    out.flush()
    return EXIT_OK


def _run_version(args: argparse.Namespace, out: TextIO) -> int:
    python = platform.python_version()
    if args.json:
        emit({"tinkex": __version__, "python": python, "protocol_reference": f"tinker {PROTOCOL_REFERENCE}"}, out)
    else:
        out.write(_version_text() + "\n")
    return EXIT_OK


# ---------------------------------------------------------------- entry point


def _serve_arguments(argv: List[str], command: str = "serve") -> Optional[List[str]]:
    """The arguments after ``command`` when that is the command (only ``--debug`` may come first)."""
    position = 0
    while position < len(argv) and argv[position] == "--debug":
        position += 1
    if position < len(argv) and argv[position] == command:
        return argv[position + 1:]
    return None


def _serve(arguments: List[str]) -> int:
    try:
        from .server import cli as server_cli
    except ImportError as exc:
        print(f"error: tinkex serve needs the server extra ({exc.name} is missing): pip install 'tinkex[server]'",
              file=sys.stderr)
        return EXIT_ERROR
    try:
        return int(server_cli.main(arguments) or 0)
    except SystemExit as exc:  # its argparse: --help or bad usage
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def _eval(arguments: List[str], debug: bool) -> int:
    """``tinkex eval``: lm-eval's own command line with the ``tinkex`` model registered."""
    try:
        from .contrib._lm_eval_cli import run as run_lm_eval
    except ImportError as exc:
        print(f"error: tinkex eval needs the lm-eval extra ({exc.name} is missing): pip install 'tinkex[lm-eval]'",
              file=sys.stderr)
        return EXIT_ERROR
    return _dispatch(lambda _args, _out: run_lm_eval(arguments), argparse.Namespace(), sys.stdout, debug)


def _configure_logging(debug: bool) -> None:
    """tinkex's own log on stderr: DEBUG with ``--debug``, else ``TINKER_LOG``, else warnings only.

    Only the ``tinkex`` logger gets a handler, so urllib3's connection chatter stays out.
    """
    apply_log_level("debug" if debug else os.environ.get("TINKER_LOG", "").strip() or "warning")


def _configure_serve_logging(debug: bool) -> None:
    # The server configures the root logger itself (its --log-level); --debug before `serve` wins.
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if debug:  # also when the root logger was configured before us
        logging.getLogger("tinkex").setLevel(logging.DEBUG)


def _report(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    expected = isinstance(exc, (TinkexError, CLIError, OSError))
    prefix = "error" if expected else f"unexpected error ({type(exc).__name__})"
    hint = "" if debug or expected else " [run with --debug for the traceback]"
    print(f"{prefix}: {describe(exc)}{hint}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    """Run the ``tinkex`` command; returns the exit code.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        out: where results go (default ``sys.stdout``); errors always go to ``sys.stderr``.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    served = _serve_arguments(arguments)
    if served is not None:
        _configure_serve_logging(arguments[:1] == ["--debug"])
        return _serve(served)
    evaluated = _serve_arguments(arguments, "eval")
    if evaluated is not None:  # lm-eval configures its own logging (--verbosity)
        return _eval(evaluated, arguments[:1] == ["--debug"])
    parser = build_parser()
    try:
        args = parser.parse_args(arguments)
        _check_usage(vars(args).pop("command_parser", parser), args)
    except SystemExit as exc:  # argparse: --help (0) or bad usage (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    _configure_logging(debug)
    return _dispatch(args.handler, args, out or sys.stdout, debug)


def _dispatch(handler: Callable[..., int], args: argparse.Namespace, out: TextIO, debug: bool) -> int:
    try:
        return int(handler(args, out) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `tinkex sample ... | head -1`: stop quietly
        _silence_stdout()
        return EXIT_ERROR
    except Exception as exc:
        return _report(exc, debug)


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
