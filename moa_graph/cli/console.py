"""Terminal rendering for the command line: live progress on stderr, the answer on stdout."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from langchain_core.messages import AIMessage, BaseMessage

from moa_graph.chat_model import total_usage
from moa_graph.engine.graph import AGGREGATE, is_answer_token
from moa_graph.state import Proposal, merge_proposals


@dataclass
class RunOutcome:
    """What one run produced: the final message, every proposal and the wall time."""

    answer: BaseMessage
    proposals: list[Proposal]
    wall_s: float

    def as_json(self, *, question: str, model_name: str) -> str:
        """A machine-readable summary (no secrets: models are named, never their keys)."""
        usage = total_usage(self.proposals, self.answer)
        return json.dumps(
            {
                "question": question,
                "answer": self.answer.text,
                "model": model_name,
                "wall_s": round(self.wall_s, 3),
                "usage": dict(usage),
                "proposals": self.proposals,
            },
            indent=2,
            ensure_ascii=False,
        )


@dataclass
class ProgressPrinter:
    """Prints one line per progress event and streams the aggregator's tokens.

    Once the answer streams (staircase streaming starts it while proposers still write), later
    progress lines wait until it ends, so they never cut through the answer on a terminal.

    Example:
        >>> import io
        >>> err, out = io.StringIO(), io.StringIO()
        >>> printer = ProgressPrinter(err=err, out=out)
        >>> printer.event({"moa_event": "proposal_finished", "layer": 1, "index": 0,
        ...                "proposer": "qwen", "model": "qwen", "latency_s": 1.25})
        >>> err.getvalue()
        '  layer 1 | qwen: done in 1.2s\\n'
    """

    err: TextIO = field(default_factory=lambda: sys.stderr)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    stream_answer: bool = True
    show_proposals: bool = False
    _held: list[str] | None = field(default=None, init=False, repr=False)

    def event(self, event: Mapping[str, Any]) -> None:
        kind, layer = event["moa_event"], event["layer"]
        who = event.get("proposer", "")
        if kind == "proposal_started":
            line = f"  layer {layer} | {who}: running"
        elif kind == "proposal_finished":
            line = f"  layer {layer} | {who}: done in {event['latency_s']:.1f}s"
        elif kind == "proposal_failed":
            line = (
                f"  layer {layer} | {who}: FAILED after {event['latency_s']:.1f}s: {event['error']}"
            )
        elif kind == "layer_done":
            line = f"layer {layer} done: {event['succeeded']} answered, {event['failed']} failed"
        elif kind == "aggregation_started":
            line = f"layer {layer} | aggregating with {who} ..."
        elif kind == "early_exit":
            line = (
                f"layer {layer}: every proposer gave the same answer; "
                f"{event['calls_saved']} calls skipped"
            )
        else:
            return
        if self._held is not None:
            self._held.append(line)
        else:
            print(line, file=self.err, flush=True)

    def token(self, text: str) -> None:
        if self.stream_answer:
            if self._held is None:
                self._held = []
            self.out.write(text)
            self.out.flush()

    def finish(self, outcome: RunOutcome, *, streamed: bool) -> None:
        if self.show_proposals:
            for p in outcome.proposals:
                status = p["text"] if p["error"] is None else f"FAILED: {p['error']}"
                print(f"\n--- layer {p['layer']} | {p['proposer']} ---\n{status}", file=self.err)
            print("", file=self.err)
        if self.stream_answer:
            if not streamed:
                self.out.write(outcome.answer.text)
            self.out.write("\n")
            self.out.flush()
        for line in self._held or ():
            print(line, file=self.err, flush=True)
        self._held = None
        usage = total_usage(outcome.proposals, outcome.answer)
        calls = sum(p["attempts"] for p in outcome.proposals) + int(
            outcome.answer.response_metadata.get("moa_aggregator_calls", 1)
        )
        print(
            f"({calls} calls, {usage['total_tokens']} tokens, {outcome.wall_s:.1f}s)",
            file=self.err,
            flush=True,
        )


def follow_run(stream: Iterable[tuple[str, Any]], printer: ProgressPrinter) -> RunOutcome:
    """Consume a graph stream of ``custom``, ``messages`` and ``updates`` parts."""
    started = time.perf_counter()
    proposals: list[Proposal] = []
    answer: BaseMessage | None = None
    streamed = False
    for mode, payload in stream:
        if mode == "custom":
            printer.event(payload)
        elif mode == "messages":
            chunk, metadata = payload
            if is_answer_token(metadata) and isinstance(chunk, AIMessage) and chunk.text:
                streamed = True
                printer.token(chunk.text)
        elif mode == "updates":
            for node, update in payload.items():
                if update and isinstance(update.get("proposals"), list):
                    proposals = merge_proposals(proposals, update["proposals"])
                if node == AGGREGATE and update:
                    answer = update["messages"][-1]
    if answer is None:
        raise RuntimeError("the run ended without an answer")
    outcome = RunOutcome(answer=answer, proposals=proposals, wall_s=time.perf_counter() - started)
    printer.finish(outcome, streamed=streamed)
    return outcome
