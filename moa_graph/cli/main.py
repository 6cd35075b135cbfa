"""The ``moa-graph`` command: ``ask`` one question, or ``chat`` in the terminal.

Examples::

    moa-graph ask "What are 3 fun things to do in SF?"          # local models, no key
    moa-graph ask --preset together --show-proposals "..."        # needs TOGETHER_API_KEY
    moa-graph ask --proposer openai:gpt-4o-mini --proposer openai:gpt-4.1-mini \
        --aggregator openai:gpt-4o --layers 2 --json "..."
    moa-graph chat --preset local-tiny
    MOA_GRAPH_API_KEY=... moa-graph serve --preset local --port 8000    # OpenAI-compatible API
    moa-graph eval --dataset gsm8k --limit 50 --systems local:qwen2.5-coder-1.5b local
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, cast

from langchain_core.messages import BaseMessage, HumanMessage
from pydantic import ValidationError

from moa_graph.aggregation import AGGREGATIONS
from moa_graph.answers import EXTRACTORS
from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.cli.console import ProgressPrinter, RunOutcome, follow_run
from moa_graph.evaluation.cli import build_eval_parser, main_eval
from moa_graph.presets import PRESETS, Recipe, default_preset_name, get_preset, load_recipe

EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa-graph", description="Mixture-of-Agents on LangGraph (arXiv 2406.04692)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question")
    ask.add_argument("question", help="the question to answer")
    ask.add_argument("--json", action="store_true", help="print a JSON result instead of text")
    chat = commands.add_parser("chat", help="a multi-turn conversation in the terminal")
    serve = commands.add_parser("serve", help="serve the mixture as an OpenAI-compatible API")
    for command in (ask, chat, serve):
        _add_mixture_options(command)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-name", help="served model id (default: moa:<aggregator model>)")
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes, each with its own mixture"
    )
    serve.add_argument(
        "--max-body-bytes", type=int, default=8 * 1024 * 1024, metavar="N",
        help="larger request bodies get 413 (default: 8 MiB)",
    )  # fmt: skip
    serve.add_argument(
        "--body-timeout", type=float, default=30.0, metavar="SECONDS",
        help="a client has this long to send its request body, then 408 (default: 30)",
    )  # fmt: skip
    serve.add_argument(
        "--timeout-keep-alive", type=int, default=5, metavar="SECONDS",
        help="idle keep-alive connections are closed after this (default: 5)",
    )  # fmt: skip
    build_eval_parser(commands.add_parser("eval", help="evaluate systems on a data set"))
    return parser


def _add_mixture_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="named recipe (default: local without a key)"
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML recipe file")
    parser.add_argument(
        "--proposer", action="append", metavar="MODEL", help="proposer model spec (repeatable)"
    )
    parser.add_argument("--aggregator", metavar="MODEL", help="aggregator model spec")
    parser.add_argument("--layers", type=int, help="layers, aggregator included (3 = paper MoA)")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--timeout", type=float, help="seconds per remote call")
    parser.add_argument("--min-proposals", type=int)
    parser.add_argument(
        "--aggregation",
        choices=AGGREGATIONS,
        help="how the final answer is made (default: the recipe's, else synthesize)",
    )
    parser.add_argument(
        "--answer-extractor",
        choices=sorted(EXTRACTORS),
        help="reads final answers for vote, synthesize_with_votes and --early-exit",
    )
    parser.add_argument(
        "--shuffle-references", action="store_true", default=None,
        help="show references in a per-call random order (recorded)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, help="seed of samples and shuffles")
    parser.add_argument(
        "--aggregation-window", type=int, metavar="N",
        help="Self-MoA-Seq: synthesize at most N references per call",
    )  # fmt: skip
    parser.add_argument(
        "--early-exit", action="store_true", default=None,
        help="stop when every proposer of a layer gives the same final answer",
    )  # fmt: skip
    parser.add_argument(
        "--show-proposals", action="store_true", help="print every proposal before the answer"
    )


def build_mixture(args: argparse.Namespace) -> ChatMixtureOfAgents:
    """The chat model the options describe; any configuration problem is a ``UsageError``."""
    try:
        recipe = _base_recipe(args)
        overrides: dict[str, Any] = {}
        if args.proposer:
            overrides["proposers"] = list(args.proposer)
        for option in ("aggregator", "layers", "temperature", "max_tokens", "timeout",
                       "min_proposals", "aggregation", "answer_extractor", "shuffle_references",
                       "seed", "aggregation_window", "early_exit"):  # fmt: skip
            value = getattr(args, option)
            if value is not None:
                overrides[option] = value
        return recipe.chat_model(**overrides)
    except ValueError as exc:
        raise UsageError(_first_line(exc)) from None


def _base_recipe(args: argparse.Namespace) -> Recipe:
    if args.config and args.preset:
        raise ValueError("give either --config or --preset, not both")
    if args.config:
        return load_recipe(args.config)
    return get_preset(args.preset or default_preset_name())


def run_once(
    moa: ChatMixtureOfAgents, messages: list[BaseMessage], printer: ProgressPrinter
) -> RunOutcome:
    """Run the mixture on a conversation, printing progress and the answer as they come."""
    stream: Iterator[tuple[str, Any]] = moa.graph.stream(  # type: ignore[assignment]
        {"messages": messages},
        moa.plan.run_config(),
        stream_mode=["custom", "messages", "updates"],
    )
    return follow_run(stream, printer)


def command_ask(args: argparse.Namespace) -> int:
    moa = build_mixture(args)
    printer = ProgressPrinter(stream_answer=not args.json, show_proposals=args.show_proposals)
    _announce(moa)
    outcome = run_once(moa, [HumanMessage(args.question)], printer)
    if args.json:
        print(outcome.as_json(question=args.question, model_name=moa.model_name))
    return 0


def command_chat(args: argparse.Namespace) -> int:
    moa = build_mixture(args)
    printer = ProgressPrinter(show_proposals=args.show_proposals)
    _announce(moa)
    print("Type a message; /reset starts over, /exit (or Ctrl-D) quits.", file=sys.stderr)
    history: list[BaseMessage] = []
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print("", file=sys.stderr)
            return 0
        text = line.strip()
        if text in {"/exit", "/quit"}:
            return 0
        if text == "/reset":
            history.clear()
            continue
        if not text:
            continue
        history.append(HumanMessage(text))
        outcome = run_once(moa, history, printer)
        history.append(outcome.answer)


def mixture_source(args: argparse.Namespace) -> dict[str, Any]:
    """The options' mixture as JSON (``preset``, ``config``, ``overrides``).

    Serve's worker processes build their mixtures from it (``openai_app.mixture_from_source``).
    """
    overrides: dict[str, Any] = {"proposers": list(args.proposer)} if args.proposer else {}
    for option in ("aggregator", "layers", "temperature", "max_tokens", "timeout",
                   "min_proposals", "aggregation", "answer_extractor", "shuffle_references",
                   "seed", "aggregation_window", "early_exit"):  # fmt: skip
        if getattr(args, option) is not None:
            overrides[option] = getattr(args, option)
    return {"preset": args.preset, "config": args.config, "overrides": overrides}


def command_serve(args: argparse.Namespace) -> int:
    """Serve ``/v1/chat/completions``; ``MOA_GRAPH_API_KEY`` (if set) is the required key."""
    from moa_graph.serve.openai_app import MixtureSource, mixture_from_source, serve

    if args.workers < 1 or args.max_body_bytes < 1 or args.body_timeout <= 0:
        raise UsageError("--workers, --max-body-bytes and --body-timeout must be positive")
    source = cast(MixtureSource, mixture_source(args))
    try:
        moa = mixture_from_source(
            source
        )  # here once, so a bad option is one line, not N tracebacks
    except ValueError as exc:
        raise UsageError(_first_line(exc)) from None
    _announce(moa)
    serve(
        moa if args.workers == 1 else source,
        host=args.host,
        port=args.port,
        model_name=args.model_name or moa.model_name,
        api_key=os.environ.get("MOA_GRAPH_API_KEY") or None,
        workers=args.workers,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        timeout_keep_alive=args.timeout_keep_alive,
    )
    return 0


def _announce(moa: ChatMixtureOfAgents) -> None:
    plan = moa.plan
    names = ", ".join(slot.name for slot in plan.proposer_layers[0])
    print(
        f"MoA: {plan.layers} layers | proposers: {names} | aggregator: {plan.aggregator.name}",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``moa-graph``; returns the exit code."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["eval"]:
        return main_eval(arguments[1:])
    args = build_parser().parse_args(arguments)
    command = {"ask": command_ask, "chat": command_chat, "serve": command_serve}[args.command]
    try:
        return command(args)
    except UsageError as exc:
        print(f"moa-graph: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nmoa-graph: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        print(f"moa-graph: error: {type(exc).__name__}: {_first_line(exc)}", file=sys.stderr)
        return EXIT_RUN_FAILED


def _first_line(exc: BaseException) -> str:
    """One line that names the problem (pydantic's field errors without their boilerplate)."""
    if isinstance(exc, ValidationError):
        return "; ".join(_field_error(error) for error in exc.errors())
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _field_error(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ").splitlines()[0]
    location = ".".join(str(part) for part in error.get("loc", ()))
    return f"{location}: {message}" if location and not message.startswith(location) else message


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
