"""The ``moa-graph`` command: ``ask`` one question, or ``chat`` in the terminal.

Examples::

    moa-graph ask "What are 3 fun things to do in SF?"          # local models, no key
    moa-graph ask --preset together --show-proposals "..."        # needs TOGETHER_API_KEY
    moa-graph ask --proposer openai:gpt-4o-mini --proposer openai:gpt-4.1-mini \
        --aggregator openai:gpt-4o --layers 2 --json "..."
    moa-graph chat --preset local-tiny
    MOA_GRAPH_API_KEY=... moa-graph serve --preset local --port 8000    # OpenAI-compatible API
    moa-graph eval --dataset gsm8k --limit 50 --systems local:qwen2.5-coder-1.5b local
    moa-graph models list                  # the embedded models; `models pull local` installs
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, cast

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from pydantic import ValidationError

from moa_graph.chat_model import ChatMixtureOfAgents
from moa_graph.cli.console import ProgressPrinter, RunOutcome, follow_run
from moa_graph.cli.models import add_models_parser, command_models
from moa_graph.cli.options import (
    add_mixture_options,
    add_serve_options,
    base_recipe,
    mixture_overrides,
    mixture_source,
    serve_options,
    serve_options_table,
    settings_table,
    strategies_table,
)
from moa_graph.extras import MissingExtraError, require
from moa_graph.redact import masked_url

EXIT_USAGE, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa-graph", description="Mixture-of-Agents on LangGraph (arXiv 2406.04692)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="answer one question")
    ask.add_argument("question", nargs="?", help="the question to answer")
    ask.add_argument("--json", action="store_true", help="print a JSON result instead of text")
    add_thread_options(ask, "keep the run's thread there, to resume it if the run stops")
    ask.add_argument("--resume", action="store_true",
                     help="finish the unfinished run of --thread instead of asking anew; "
                          "no answered proposer is called again")  # fmt: skip
    chat = commands.add_parser("chat", help="a multi-turn conversation in the terminal")
    add_thread_options(chat, "keep the conversation's thread there, to go on with it later")
    serve = commands.add_parser("serve", help="serve the mixture as an OpenAI-compatible API")
    for command in (ask, chat, serve):
        add_mixture_options(command)
        command.add_argument(
            "--show-proposals", action="store_true", help="print every proposal before the answer"
        )
    add_serve_options(serve)
    commands.add_parser("settings", help="list every mixture setting (name, flag, default)")
    add_models_parser(commands)
    # ``eval`` has its own parser (``moa-graph eval --help``), loaded only when it runs.
    commands.add_parser("eval", help="evaluate systems on a data set", add_help=False)
    return parser


def add_thread_options(parser: argparse.ArgumentParser, keep: str) -> None:
    """``--checkpoint URL`` and ``--thread ID``: where a thread is kept, and which."""
    parser.add_argument("--checkpoint", metavar="URL",
                        help=f"{keep}: sqlite:///PATH or postgresql://...")  # fmt: skip
    parser.add_argument("--thread", metavar="ID", help="the thread's id (default: a new one)")


def checked_checkpoint(args: argparse.Namespace) -> None:
    """Refuse a ``--checkpoint`` that is not a checkpoint URL (before any model is built)."""
    if args.checkpoint:
        from moa_graph.checkpoints import checkpoint_kind

        try:
            kind = checkpoint_kind(args.checkpoint)
        except ValueError as exc:
            raise UsageError(_first_line(exc)) from None
        if kind == "memory":
            raise UsageError("--checkpoint memory keeps nothing once the command ends: "
                             "give sqlite:///PATH or postgresql://...")  # fmt: skip
        require(kind, f"--checkpoint {kind}")


def build_mixture(args: argparse.Namespace) -> ChatMixtureOfAgents:
    """The chat model the options describe; any configuration problem is a ``UsageError``."""
    try:
        return base_recipe(args).chat_model(**mixture_overrides(args))
    except ValueError as exc:
        raise UsageError(_first_line(exc)) from None


def run_once(
    moa: ChatMixtureOfAgents, messages: list[BaseMessage], printer: ProgressPrinter
) -> RunOutcome:
    """Run the mixture on a conversation, printing progress and the answer as they come."""
    return follow_graph(moa.graph, {"messages": messages}, moa.plan.run_config(), printer)


def follow_graph(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    run_input: Any,
    config: RunnableConfig,
    printer: ProgressPrinter,
) -> RunOutcome:
    """Run ``graph`` (``run_input`` ``None``: finish its thread's run), printing as it goes."""
    stream: Iterator[tuple[str, Any]] = graph.stream(  # type: ignore[assignment]
        run_input, config, stream_mode=["custom", "messages", "updates"]
    )
    return follow_run(stream, printer)


def kept_graph(
    moa: ChatMixtureOfAgents, url: str, opened: contextlib.ExitStack
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The mixture's graph keeping its threads at ``url`` (open until ``opened`` closes)."""
    from moa_graph.checkpoints import checkpointer
    from moa_graph.engine.graph import build_graph

    try:
        saver = opened.enter_context(checkpointer(url))
    except ValueError as exc:
        raise UsageError(_first_line(exc)) from None
    return build_graph(moa.plan).compile(checkpointer=saver, name="mixture_of_agents")


def command_ask(args: argparse.Namespace) -> int:
    if args.resume and not (args.checkpoint and args.thread):
        raise UsageError("--resume: give the --checkpoint and the --thread of the run to finish")
    if args.resume == bool(args.question):
        raise UsageError("ask: give a question, or --resume a thread (not both)")
    checked_checkpoint(args)
    moa = build_mixture(args)
    printer = ProgressPrinter(stream_answer=not args.json, show_proposals=args.show_proposals)
    _announce(moa)
    if args.checkpoint:
        question, outcome = run_on_thread(moa, args, printer)
    else:
        question, outcome = args.question, run_once(moa, [HumanMessage(args.question)], printer)
    if args.json:
        print(outcome.as_json(question=question, model_name=moa.model_name))
    return 0


def run_on_thread(
    moa: ChatMixtureOfAgents, args: argparse.Namespace, printer: ProgressPrinter
) -> tuple[str, RunOutcome]:
    """Run (or with ``--resume``, finish) the mixture on a thread kept at ``--checkpoint``."""
    thread = args.thread or uuid.uuid4().hex
    with contextlib.ExitStack() as opened:
        graph = kept_graph(moa, args.checkpoint, opened)
        config: Any = {**moa.plan.run_config(), "configurable": {"thread_id": thread}}
        if args.resume and not graph.get_state(config).next:
            raise UsageError(f"--resume: thread {thread} has no unfinished run in that checkpoint")
        if not args.resume:
            print(f"thread: {thread} (if the run stops, finish it with --checkpoint "
                  f"{masked_url(args.checkpoint)} --thread {thread} --resume)",
                  file=sys.stderr)  # fmt: skip
        run_input: Any = None if args.resume else {"messages": [HumanMessage(args.question)]}
        outcome = follow_graph(graph, run_input, config, printer)
        state = graph.get_state(config).values
    outcome.proposals = list(state.get("proposals", outcome.proposals))  # saved ones too
    return str(state["messages"][0].text), outcome


def command_chat(args: argparse.Namespace) -> int:
    checked_checkpoint(args)
    if args.thread and not args.checkpoint:
        raise UsageError("--thread: give the --checkpoint where the thread is kept")
    moa = build_mixture(args)
    printer = ProgressPrinter(show_proposals=args.show_proposals)
    _announce(moa)
    print("Type a message; /reset starts over, /exit (or Ctrl-D) quits.", file=sys.stderr)
    with contextlib.ExitStack() as opened:
        conversation = KeptConversation(moa, args, opened) if args.checkpoint else Conversation(moa)
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
                conversation.reset()
                continue
            if text:
                conversation.say(text, printer)


class Conversation:
    """A terminal conversation kept in memory."""

    def __init__(self, moa: ChatMixtureOfAgents) -> None:
        self.moa = moa
        self.history: list[BaseMessage] = []

    def say(self, text: str, printer: ProgressPrinter) -> None:
        self.history.append(HumanMessage(text))
        self.history.append(run_once(self.moa, self.history, printer).answer)

    def reset(self) -> None:
        self.history.clear()


class KeptConversation:
    """A terminal conversation kept on a thread at ``--checkpoint``: each turn runs on the
    thread, which holds the conversation, so ``--thread ID`` goes on with it later (from any
    machine reaching the store), and a turn whose run stopped is finished first."""

    def __init__(
        self, moa: ChatMixtureOfAgents, args: argparse.Namespace, opened: contextlib.ExitStack
    ) -> None:
        self.graph = kept_graph(moa, args.checkpoint, opened)
        self.run_config = moa.plan.run_config()
        self.where = masked_url(args.checkpoint)
        self._open(args.thread or uuid.uuid4().hex)

    def _open(self, thread: str) -> None:
        self.config = RunnableConfig(**self.run_config, configurable={"thread_id": thread})
        state = self.graph.get_state(self.config)
        earlier = len(state.values.get("messages", []))
        going_on = f", going on after {earlier} earlier messages" if earlier else ""
        print(f"thread: {thread}{going_on} (go on with it later with --checkpoint {self.where} "
              f"--thread {thread})", file=sys.stderr)  # fmt: skip
        self.unfinished = bool(state.next)
        if self.unfinished:
            asked = state.values["messages"][-1].text
            print(f"its last turn stopped before the answer ({asked!r}): it is finished before "
                  "your next message", file=sys.stderr)  # fmt: skip

    def say(self, text: str, printer: ProgressPrinter) -> None:
        if self.unfinished:  # the last turn's run stopped: its answer comes first
            print("finishing the turn that stopped first:", file=sys.stderr)
            self._run(None, printer)
        self._run({"messages": [HumanMessage(text)]}, printer)

    def _run(self, run_input: Any, printer: ProgressPrinter) -> None:
        self.unfinished = True  # until the run ends
        follow_graph(self.graph, run_input, self.config, printer)
        self.unfinished = False

    def reset(self) -> None:
        self._open(uuid.uuid4().hex)


def command_serve(args: argparse.Namespace) -> int:
    """Serve ``/v1/chat/completions``; ``MOA_GRAPH_API_KEY`` (if set) is the required key."""
    require("serve", "moa-graph serve")
    from moa_graph.serve.openai_app import MixtureSource, mixture_from_source, serve

    source = cast(MixtureSource, mixture_source(args))
    try:  # built here once, so a bad option is one line, not a traceback per worker
        options = serve_options(args)
        moa = mixture_from_source(source)
    except ValueError as exc:
        raise UsageError(_first_line(exc)) from None
    _announce(moa)
    api_key = os.environ.get("MOA_GRAPH_API_KEY") or None
    serve(moa if options["workers"] == 1 else source, api_key=api_key,
          **{**options, "model_name": options["model_name"] or moa.model_name})  # fmt: skip
    return 0


def command_settings(args: argparse.Namespace) -> int:
    """Print every mixture setting, the aggregation strategies and the server's options."""
    print("\n\n".join((settings_table(), strategies_table(), serve_options_table())))
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
        from moa_graph.evaluation.cli import main_eval

        return main_eval(arguments[1:])
    args = build_parser().parse_args(arguments)
    commands = {"ask": command_ask, "chat": command_chat, "serve": command_serve,
                "settings": command_settings, "models": command_models}  # fmt: skip
    command = commands[args.command]
    try:
        return command(args)
    except (UsageError, MissingExtraError) as exc:  # one line naming the fix, no traceback
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
