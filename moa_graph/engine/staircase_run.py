"""One staircase run: its proposers as LangGraph tasks, the aggregator in the graph's step.

``StaircaseRun`` owns the run's ``Board`` and turns every writer's rounds into model calls (with
the mixture's deadlines, retries, races and call limiter), progress events and traced runs, and
the proposers' outcomes into ``Proposal`` records. The graph's aggregate step (``run_sync`` /
``run_async``) creates it, starts a ``propose`` task per proposer and writes the aggregator's
answer itself (see ``moa_graph.engine.staircase`` for how the rounds go).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, UsageMetadata
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.config import get_config
from langgraph.errors import GraphBubbleUp
from langgraph.func import task

from moa_graph.engine.calls import CallCancelled, CallPolicy
from moa_graph.engine.events import aggregator_identity, emit, identity
from moa_graph.engine.final_answer import TokenWatcher, aggregator_config
from moa_graph.engine.plan import ProposerSlot
from moa_graph.engine.proposer_call import announce, proposal_record, proposer_config
from moa_graph.engine.race import LayerRace
from moa_graph.engine.runner import ModelCall, Steps, WaitFor, drive_async, drive_sync
from moa_graph.engine.scope import RunScope, sample_seed, seeded
from moa_graph.engine.staircase import (
    VLLM_CONTINUATION,
    Board,
    Key,
    Schedule,
    Status,
    Writer,
    round_messages,
)
from moa_graph.errors import ProposalsFailedError
from moa_graph.state import MoAState, Proposal
from moa_graph.tokens import sum_usage
from moa_graph.tool_rendering import render_tool_turns


@dataclass(frozen=True)
class _Model:
    """What a writer's calls need: the model and how it continues, its prompt and labels."""

    runnable: Runnable[Any, BaseMessage]
    continuation: str | None
    system_prompt: str | None
    config: RunnableConfig
    run_name: str
    policy: CallPolicy
    who: dict[str, Any]
    seed: int | None = None
    """Its first round's sampling seed (later rounds derive theirs from it)."""
    priority: int | None = None
    """Its turn priority on shared cores (its layer: readers nearer the answer go first), for
    models that take turns; ``None`` for the others."""


ROUND_SEED_STRIDE = 1_000_003
"""Round r of a writer seeded s draws with ``s + (r - 1) * ROUND_SEED_STRIDE``: never another
sample's seed (sample k of a model draws with the mixture's seed plus k)."""


class StaircaseRun:
    """The staircase of one run (see the module docstring)."""

    def __init__(self, scope: RunScope, state: MoAState, config: RunnableConfig) -> None:
        self.scope, self.plan = scope, scope.plan
        options = scope.options
        self.schedule = Schedule(options.staircase or 1, options.staircase_growth)
        self.messages = state["messages"]
        self.config = config
        self.board = Board()
        self.records: dict[Key, Proposal] = {}
        self.failure: ProposalsFailedError | None = None
        self.fallback: str | None = None  # why the aggregator went on below quorum
        self.failed: str | None = None
        """Why the run failed, once it did."""
        self._lock = threading.Lock()
        self._reported: set[int] = set()
        self._races: dict[int, LayerRace | None] = {}

    # -- the shape ---------------------------------------------------------------------------

    @property
    def slots(self) -> list[ProposerSlot]:
        """Every proposer of the run, layer by layer, in configured order."""
        return [slot for layer in self.plan.proposer_layers for slot in layer]

    def _writer(self, key: Key, budget: int | None, in_chunks: bool) -> Writer:
        """The writer ``key``, reading the layer before its own (layer 1 reads nothing)."""
        layer = key[0]
        sources = [(s.layer, s.index) for s in self.scope.layer(layer - 1)] if layer > 1 else []
        return Writer(key, self.board, self.schedule, self.scope.options.token_counter,
                      sources, budget, in_chunks=in_chunks)  # fmt: skip

    def _race(self, layer: int) -> LayerRace | None:
        """The race of ``layer``, made by its first proposer; the run owns it to its end."""
        with self._lock:
            if layer not in self._races:
                self._races[layer] = self.scope.new_race(layer)
            return self._races[layer]

    # -- proposers ---------------------------------------------------------------------------

    def _proposer_model(self, slot: ProposerSlot, config: RunnableConfig) -> _Model:
        config = proposer_config(self.scope, slot, config, {}, streamed=True)  # read in rounds
        return _Model(seeded(self.plan, slot), slot.continuation, slot.system_prompt, config,
                      str(config.get("run_name")), slot.policy, identity(slot),
                      sample_seed(self.plan, slot),
                      slot.layer if slot.takes_turns else None)  # fmt: skip

    def propose(self, layer: int, index: int, config: RunnableConfig) -> Steps[Proposal]:
        """Write one proposer's answer, round by round."""
        slot, started = self.scope.slot(layer, index), time.perf_counter()
        model = self._proposer_model(slot, config)
        writer = self._writer((layer, index), slot.max_tokens, slot.takes_turns)
        race = self._race(slot.layer)
        if race is not None:  # a layer that stops waiting wakes the proposers waiting for a round
            race.subscribe(self.board.poke)
        emit(self.scope.runtime, moa_event="proposal_started", **model.who)
        status: Status = "answered"
        error: str | None = None
        try:
            conversation = render_tool_turns(self.messages)  # proposers see no tool turns
            while not writer.done:
                yield WaitFor(self.board, lambda: writer.ready() or bool(race and race.stopped))
                self._stop_if_stopped(race)
                yield from self._round(
                    model, writer, conversation, race=race, can_retry=self._no_text_since(writer),
                    on_text=partial(self.board.write, writer.key),
                    stopped=lambda: self.board.aborted,
                )  # fmt: skip
        except GraphBubbleUp:
            raise
        except Exception as exc:
            status, error = self._failure_of(exc)
        return self._ended(slot, writer, status, error, started, race)

    def propose_sync(self, layer: int, index: int) -> Proposal:
        """``propose`` as the body of a proposer's LangGraph task, under ``invoke``."""
        return drive_sync(self.propose(layer, index, get_config()), self.scope.limiter)

    async def propose_async(self, layer: int, index: int) -> Proposal:
        """``propose`` as the body of a proposer's LangGraph task, under ``ainvoke``."""
        return await drive_async(self.propose(layer, index, get_config()), self.scope.limiter)

    def _failure_of(self, exc: Exception) -> tuple[Status, str]:
        """A proposer's end by ``exc``: cut off or failed. When the whole run failed, the
        proposer is not done: its task fails too, so that a resumed run calls it again."""
        if self.failed is not None:
            raise RunStopped(self.failed) from None
        if isinstance(exc, CallCancelled):
            return "cancelled", f"cancelled: {exc.reason}"
        return "failed", self.scope.describe(exc)

    def _ended(
        self, slot: ProposerSlot, writer: Writer, status: Status, error: str | None,
        started: float, race: LayerRace | None,
    ) -> Proposal:  # fmt: skip
        """Record a proposer's outcome, tell its readers and its layer's race."""
        latency = round(time.perf_counter() - started, 6)
        text = self.board.entry(writer.key).text  # all it wrote, a failed round's part too
        usage = sum_usage(writer.usage) if writer.usage else None
        proposal = proposal_record(slot, status, text, error, usage, latency,
                                   max(writer.rounds, 1), rounds=writer.rounds)  # fmt: skip
        self.publish(proposal)
        announce(self.scope, slot, race, proposal)
        return proposal

    def publish(self, proposal: Proposal) -> None:
        """Put a proposer's final outcome on the board (also one a resumed run found saved),
        and judge its layer once every proposer of it has ended."""
        key = (proposal["layer"], proposal["index"])
        with self._lock:
            if key in self.records:
                return
            self.records[key] = proposal
        if not self.board.entry(key).text and proposal["text"]:
            self.board.write(key, proposal["text"])  # saved by an earlier, interrupted run
        self.board.end(key, proposal["status"])
        self._judge_layer(proposal["layer"])

    def _judge_layer(self, layer: int) -> None:
        slots = self.scope.layer(layer)
        with self._lock:
            records = [self.records.get((layer, slot.index)) for slot in slots]
            if any(record is None for record in records) or layer in self._reported:
                return
            self._reported.add(layer)
        proposals = [record for record in records if record is not None]
        self.scope.layer_done(layer, proposals)
        if self.answered:  # cut off by the written answer: no quorum to meet any more
            return
        try:
            if self.scope.quorum_met(layer, proposals):
                return
        except ProposalsFailedError as failure:
            self.failure = failure
            self.stop(f"layer {layer} fell below min_proposals", failed=True)
            return
        if any(p["text"] for p in proposals):
            self.fallback = (f"layer {layer} fell below min_proposals="
                             f"{self.scope.options.min_proposals}: its readers went on with "
                             "what it had written")  # fmt: skip
        else:
            last = layer == len(self.plan.proposer_layers)
            readers = "the aggregator answered" if last else f"layer {layer + 1} answered"
            self.fallback = f"every proposer of layer {layer} failed: {readers} alone"

    def _stop_if_stopped(self, race: LayerRace | None) -> None:
        """Between rounds: stop when the run stopped or the layer stopped waiting."""
        if self.board.aborted is not None:
            raise CallCancelled(self.board.aborted)
        if race is not None and race.stopped:
            raise CallCancelled(race.reason)

    # -- rounds ------------------------------------------------------------------------------

    def _round(
        self, model: _Model, writer: Writer, conversation: Sequence[BaseMessage],
        guard: Callable[[], AbstractContextManager[Any]] = nullcontext, **rules: Any,
    ) -> Steps[None]:  # fmt: skip
        """A writer's next round: its call, streamed, with the model bound to the round's limit,
        its prompt and a traced run of its own (``rules``: how the runner makes it; ``guard``
        wraps building and making it), announced as it starts and ends."""
        round_ = writer.next_round()
        n = round_.number
        emit(self.scope.runtime, moa_event="round_started", round=n, final=round_.final,
             **model.who)  # fmt: skip
        with guard():  # building the call too, as a failure of the model
            runnable = model.runnable
            if writer.text and model.continuation == "vllm":  # continue the final assistant message
                runnable = runnable.bind(extra_body=VLLM_CONTINUATION)
            if round_.max_tokens is not None:
                runnable = runnable.bind(max_tokens=round_.max_tokens)
            if model.priority is not None:
                runnable = runnable.bind(priority=model.priority)
            if model.seed is not None and n > 1:  # each round draws afresh, reproducibly
                runnable = runnable.bind(seed=model.seed + ROUND_SEED_STRIDE * (n - 1))
            messages = round_messages(conversation, round_, writer.text, prompt=self.plan.prompt,
                                      system_prompt=model.system_prompt)  # fmt: skip
            round_labels = RunnableConfig(
                run_name=f"{model.run_name} (round {n})", tags=[f"moa:round:{n}"],
                metadata={"moa_round": n},
            )  # fmt: skip
            config = merge_configs(model.config, round_labels)
            message = yield ModelCall(runnable, messages, config, model.policy,
                                      streamed=True, continuing=bool(writer.text),
                                      **rules)  # fmt: skip
        writer.finish_round(round_, message)
        emit(self.scope.runtime, moa_event="round_finished", round=n, final=round_.final,
             **model.who)  # fmt: skip

    def _no_text_since(self, writer: Writer) -> Callable[[], bool]:
        """A retry is allowed while the round has not written anything (its readers and the
        user would see it twice)."""
        before = len(self.board.entry(writer.key).text)
        return lambda: len(self.board.entry(writer.key).text) == before

    # -- the aggregator ----------------------------------------------------------------------

    def _aggregator_model(self, watcher: TokenWatcher) -> _Model:
        aggregator = self.plan.aggregator
        config = aggregator_config(self.plan, self.config, {}, [watcher])
        return _Model(self.scope.aggregator_model(), aggregator.continuation,
                      aggregator.system_prompt, config, f"aggregator: {aggregator.name}",
                      aggregator.policy, aggregator_identity(self.plan), self.scope.options.seed,
                      self.plan.layers if aggregator.takes_turns else None)  # fmt: skip

    def aggregate(self) -> Steps[AIMessage]:
        """Write the final answer, round by round, streaming it."""
        watcher, aggregator = TokenWatcher(), self.plan.aggregator
        model = self._aggregator_model(watcher)
        writer = self._writer((self.plan.layers, 0), aggregator.max_tokens, aggregator.takes_turns)
        emit(self.scope.runtime, moa_event="aggregation_started", **model.who)
        while not writer.done:
            yield WaitFor(self.board, writer.ready)
            if self.failure is not None:
                raise self.failure
            yield from self._round(model, writer, self.messages,
                                   guard=self.scope.aggregator_failures,
                                   can_retry=lambda: not watcher.streamed)  # fmt: skip
        return self._final(model, writer)

    def _final(self, model: _Model, writer: Writer) -> AIMessage:
        emit(self.scope.runtime, moa_event="aggregation_finished", **model.who)
        metadata = {
            "moa_aggregation": self.scope.plan.strategy.name,
            "moa_aggregator_calls": writer.rounds,
            "moa_staircase": {
                "chunk_tokens": self.schedule.first,
                "growth": self.schedule.growth,
                "rounds": writer.rounds,
                "prompt_tokens": [usage["input_tokens"] for usage in writer.usage],
                # prompt tokens each round read anew (the server's prompt cache served the rest)
                "fresh_prompt_tokens": [_fresh(usage) for usage in writer.usage],
            },
        }
        if self.fallback is not None:
            metadata["moa_fallback"] = self.fallback
        usage = sum_usage(writer.usage) if writer.usage else None
        # The last round's id: LangGraph then knows the answer's tokens were streamed already.
        return AIMessage(writer.text, id=writer.last_id, response_metadata=metadata,
                         usage_metadata=usage)  # fmt: skip

    # -- the run's proposers, as LangGraph tasks ------------------------------------------------
    # A proposer is a task (``run_sync`` / ``run_async``) so that its outcome is saved as it ends:
    # a resumed run pays no finished proposer again. Named ``propose`` like the graph's proposer
    # step; its calls use the task's config, so traces and token streams name that step.

    def watch(self, futures: list[Any]) -> list[Any]:
        """Publish each proposer's outcome as its task ends (a resumed run's saved proposers
        answer at once)."""
        for future in futures:
            future.add_done_callback(self._published)
        return futures

    def _published(self, future: Any) -> None:
        if not future.cancelled() and future.exception() is None:
            self.publish(future.result())

    @contextmanager
    def stopping(self) -> Iterator[None]:
        """Around the aggregator's writing: stop every proposer still writing once it ends
        (the answer is written, or the run failed)."""
        try:
            yield
        except BaseException:
            self.stop("the run failed", failed=True)
            raise
        self.stop("the final answer is written")

    @property
    def answered(self) -> bool:
        """Whether the final answer is written (the run stopped without failing): what its
        proposers left undone no longer counts."""
        return self.board.aborted is not None and self.failed is None

    def stop(self, reason: str, *, failed: bool = False) -> None:
        """Stop every proposer still writing: the answer is written (they end ``cancelled``), or
        the run ``failed`` (their tasks fail, to be called again when the run resumes)."""
        if failed and self.failed is None:
            self.failed = reason
        if self.board.aborted is None:
            self.board.abort(reason)


def _fresh(usage: UsageMetadata) -> int:
    cached = (usage.get("input_token_details") or {}).get("cache_read", 0)
    return usage["input_tokens"] - cached


class RunStopped(RuntimeError):
    """A proposer's task ends with this when its run failed: the task is not saved as done."""


def run_sync(scope: RunScope, state: MoAState, config: RunnableConfig) -> dict[str, Any]:
    """The aggregate step of a staircase run under ``invoke``: start every proposer, write the
    answer, gather the proposals."""
    run = StaircaseRun(scope, state, config)
    propose: Callable[..., Any] = task(name="propose")(run.propose_sync)  # type: ignore[arg-type]
    futures = run.watch([propose(slot.layer, slot.index) for slot in run.slots])
    with run.stopping():
        final = drive_sync(run.aggregate(), scope.limiter)
    return {"messages": [final], "proposals": [future.result() for future in futures]}


async def run_async(scope: RunScope, state: MoAState, config: RunnableConfig) -> dict[str, Any]:
    """The aggregate step of a staircase run under ``ainvoke``."""
    run = StaircaseRun(scope, state, config)
    propose: Callable[..., Any] = task(name="propose")(run.propose_async)  # type: ignore[arg-type]
    futures = run.watch([asyncio.ensure_future(propose(s.layer, s.index)) for s in run.slots])
    with run.stopping():
        final = await drive_async(run.aggregate(), scope.limiter)
    return {"messages": [final], "proposals": list(await asyncio.gather(*futures))}
