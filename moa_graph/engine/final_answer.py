"""The final answer of a run: the aggregator's call(s), or a reference chosen without one.

``AggregatorCall`` implements every aggregation strategy once, as a generator of model calls
(``flow``); the graph's aggregate node runs those calls sync or async and hands the answers back.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, UsageMetadata
from langchain_core.messages.ai import add_usage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime

from moa_graph.aggregation import VoteCount, call_seed, count_votes, shuffled, windows
from moa_graph.aggregator import bind_aggregator
from moa_graph.answers import extract_number
from moa_graph.engine.proposer_call import AGGREGATOR_TAG, emit, truncation_record
from moa_graph.engine.run_choices import (
    answer_must_be_written,
    check_aggregator_kwargs,
    context_values,
)
from moa_graph.engine.strategies.rank import instruction_text, parse_ranker_choice, ranker_messages
from moa_graph.errors import AggregatorError
from moa_graph.prompts import with_system_prompt
from moa_graph.redact import redacting_callbacks

if TYPE_CHECKING:
    from moa_graph.engine.graph import _MoANodes
    from moa_graph.state import MoAState


@dataclass
class ModelRequest:
    """One model call an aggregation needs: what to run, on what, with which config."""

    runnable: Runnable[Any, BaseMessage]
    input: Any
    config: RunnableConfig


AggregationFlow = Generator[ModelRequest, BaseMessage, BaseMessage]
"""Yields the model calls to make, receives their answers, returns the final message."""


class AggregatorCall:
    """How the final answer of one run is made: the aggregator's call(s), or a reference chosen
    by vote, by the aggregator's ranking, or by early exit on consensus.

    ``flow()`` yields each model call to make; the graph's nodes run them (sync or async) and
    send the answers back, so both share one implementation of every strategy.
    """

    def __init__(
        self, nodes: _MoANodes, state: MoAState, config: RunnableConfig, runtime: Runtime
    ) -> None:
        self.plan = plan = nodes.run_plan(runtime)[0]
        self.options = options = plan.options
        self.nodes, self.runtime, self.state = nodes, runtime, state
        refs, self.cuts, self.fallback = nodes.final_references(state, runtime)
        self.identity = {"layer": plan.layers, "proposer": plan.aggregator.name,
                         "model": plan.aggregator.model_name}  # fmt: skip
        self.consensus = nodes.consensus(state, runtime)
        if self.consensus is not None:  # layers were skipped on purpose, not lost
            self.fallback = None
        self.order = list(range(len(refs)))
        self.shuffle_seed: int | None = None
        if options.shuffle_references and len(refs) > 1 and self.consensus is None:
            self.shuffle_seed = call_seed(options.seed, plan.layers, 0)
            refs, self.order = shuffled(refs, self.shuffle_seed)
        self.refs = refs
        self.model = plan.aggregator.model
        aggregator_kwargs = context_values(runtime.context).get("aggregator_kwargs")
        if aggregator_kwargs:
            check_aggregator_kwargs(aggregator_kwargs)
            self.model = self.model.bind(**aggregator_kwargs)
        if options.seed is not None:
            self.model = self.model.bind(seed=options.seed)
        self.watcher = _TokenWatcher()
        self.base_config = config
        self.extra: dict[str, Any] = {"moa_aggregation": options.aggregation}
        self.usage: list[UsageMetadata] = []
        self.calls = 0

    # -- the strategies ------------------------------------------------------------------------

    def flow(self) -> AggregationFlow:
        """The final answer: early exit, the aggregator alone, or the configured strategy."""
        if self.consensus is not None:
            return self._early_exit(*self.consensus)
        if not self.refs and self.fallback is not None:  # every proposer failed
            name = f"aggregator: {self.plan.aggregator.name}"
            alone = with_system_prompt(self.state["messages"], self.plan.aggregator.system_prompt)
            return (yield self._request(self.model.with_config(run_name=name), alone))
        strategy = self.options.aggregation
        if strategy in ("vote", "rank") and answer_must_be_written(self.runtime.context):
            strategy = "synthesize_with_votes"  # a verbatim reference cannot be a tool call
            self.extra["moa_aggregation"] = strategy
        if strategy == "vote":
            return (yield from self._vote())
        if strategy == "rank":
            return (yield from self._rank())
        return (yield from self._synthesize(with_votes=strategy == "synthesize_with_votes"))

    def _synthesize(self, *, with_votes: bool) -> AggregationFlow:
        groups = windows(len(self.refs), self.options.aggregation_window)
        best: BaseMessage | None = None
        for number, group in enumerate(groups, start=1):
            texts = ([best.text] if best is not None else []) + [self.refs[p] for p in group]
            note = self._votes(texts).summary() if with_votes else None
            step = None if number == len(groups) else f"window {number} of {len(groups)}"
            best = yield self._synthesis(texts, note, step=step)
        if len(groups) > 1:
            self.extra["moa_windows"] = [[self.order[p] for p in group] for group in groups]
        assert best is not None
        return best

    def _vote(self) -> AggregationFlow:
        count = self._votes(self.refs)
        self.extra["moa_votes"] = count.record()
        if count.winner is not None:
            self.extra["moa_votes"]["decided_by"] = "majority"
            return self._verbatim(count.groups[count.winner][0])
        self.extra["moa_votes"]["decided_by"] = "aggregator"
        return (yield self._synthesis(self.refs, count.summary()))

    def _rank(self) -> AggregationFlow:
        if len(self.refs) == 1:  # nothing to choose between
            self.extra["moa_rank"] = {"reply": None, "parsed": False}
            return self._verbatim(0)
        name = f"ranker: {self.plan.aggregator.name}"
        messages = ranker_messages(instruction_text(self.state["messages"]), self.refs)
        reply = yield self._request(self.model.with_config(run_name=name), messages, step="rank")
        chosen = parse_ranker_choice(reply.text, len(self.refs))
        self.extra["moa_rank"] = {"reply": reply.text, "parsed": chosen is not None}
        return self._verbatim(0 if chosen is None else chosen)

    def _early_exit(self, layer: int, count: VoteCount) -> BaseMessage:
        saved = sum(len(slots) for slots in self.plan.proposer_layers[layer:]) + 1
        self.extra["moa_early_exit"] = {"layer": layer, "answer": count.winner,
                                        "calls_saved": saved}  # fmt: skip
        emit(self.runtime, moa_event="early_exit", layer=layer, calls_saved=saved)
        return AIMessage(self.refs[0])

    # -- helpers -------------------------------------------------------------------------------

    def _votes(self, texts: list[str]) -> VoteCount:
        return count_votes(texts, self.options.extractor or extract_number)

    def _verbatim(self, position: int) -> BaseMessage:
        """Reference ``position`` (as shown) returned as the answer, as the model would."""
        self.extra["moa_chosen"] = self.order[position]
        return AIMessage(self.refs[position])

    def _synthesis(self, texts: list[str], note: str | None, *, step: str | None = None
                   ) -> ModelRequest:  # fmt: skip
        runnable = bind_aggregator(self.model, prompt=self.plan.prompt,
                                   name=f"aggregator: {self.plan.aggregator.name}",
                                   system_prompt=self.plan.aggregator.system_prompt)  # fmt: skip
        call_input = {"messages": self.state["messages"], "references": texts}
        if note:
            call_input["note"] = note
        return self._request(runnable, call_input, step=step)

    def _request(self, runnable: Runnable[Any, BaseMessage], call_input: Any,
                 step: str | None = None) -> ModelRequest:  # fmt: skip
        """A call; ``step`` names a call whose answer is not the final one (never streamed)."""
        if not self.calls:
            emit(self.runtime, moa_event="aggregation_started", **self.identity)
        self.calls += 1
        metadata: dict[str, Any] = {"moa_layer": self.plan.layers,
                                    "moa_proposer": self.plan.aggregator.name,
                                    "moa_model": self.plan.aggregator.model_name}  # fmt: skip
        if step is not None:
            metadata["moa_step"] = step
        if self.shuffle_seed is not None:
            metadata.update(moa_reference_order=self.order, moa_shuffle_seed=self.shuffle_seed)
        config = merge_configs(
            self.base_config,
            {"callbacks": [self.watcher] if step is None else [],
             "tags": [AGGREGATOR_TAG, f"moa:layer:{self.plan.layers}"], "metadata": metadata},
        )  # fmt: skip
        config["callbacks"] = redacting_callbacks(config.get("callbacks"), self.plan.secrets)
        return ModelRequest(runnable, call_input, config)

    def start(self) -> ModelRequest | None:
        """The first model call to make, or ``None`` when the answer needs none."""
        self._flow = self.flow()
        return self._advance(None)

    def resume(self, message: BaseMessage) -> ModelRequest | None:
        """Hand a call's answer back; the next call to make, or ``None`` once decided."""
        usage = getattr(message, "usage_metadata", None)
        if usage:  # the final message carries the sum of every step's usage
            self.usage.append(usage)
        return self._advance(message)

    def _advance(self, message: BaseMessage | None) -> ModelRequest | None:
        try:
            return next(self._flow) if message is None else self._flow.send(message)
        except StopIteration as finished:
            self._final: BaseMessage = finished.value
            return None

    def result(self) -> dict[str, list[BaseMessage]]:
        """The state update with the final message (after ``start``/``resume`` returned None)."""
        return self.outcome(self._final)

    # -- running one call ----------------------------------------------------------------------

    def attempt_sync(self, request: ModelRequest) -> BaseMessage:
        with self.nodes.limiter.sync_slot():
            return request.runnable.invoke(request.input, request.config)

    async def attempt_async(self, request: ModelRequest) -> BaseMessage:
        async with self.nodes.limiter.async_slot():
            return await request.runnable.ainvoke(request.input, request.config)

    def can_retry(self) -> bool:
        """No retry once tokens were streamed: the caller would see them twice."""
        return not self.watcher.streamed

    def on_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        emit(self.runtime, moa_event="proposal_retrying", attempt=attempt, delay_s=delay,
             error=self.nodes.describe(error), **self.identity)  # fmt: skip

    @contextmanager
    def failures_reported(self) -> Iterator[None]:
        """A failed call becomes an ``AggregatorError`` naming the model (graph interrupts and
        other control flow pass through)."""
        try:
            yield
        except GraphBubbleUp:
            raise
        except Exception as error:
            aggregator = self.plan.aggregator
            described = self.nodes.describe(error)  # the raw cause may quote a key
            raise AggregatorError(aggregator.name, aggregator.model_name, described) from None

    def outcome(self, message: BaseMessage) -> dict[str, list[BaseMessage]]:
        if self.calls:  # a vote, a single reference or an early exit needs no aggregator call
            emit(self.runtime, moa_event="aggregation_finished", **self.identity)
        extra = dict(self.extra)
        if self.fallback:
            extra["moa_fallback"] = self.fallback
        if self.cuts:
            extra["moa_truncations"] = [truncation_record(cut) for cut in self.cuts]
        if self.shuffle_seed is not None:
            extra.update(moa_reference_order=self.order, moa_shuffle_seed=self.shuffle_seed)
        extra["moa_aggregator_calls"] = self.calls
        update: dict[str, Any] = {"response_metadata": {**message.response_metadata, **extra}}
        if len(self.usage) > 1 or (self.usage and getattr(message, "usage_metadata", None) is None):
            update["usage_metadata"] = sum_usage(self.usage)
        return {"messages": [message.model_copy(update=update)]}


class _TokenWatcher(BaseCallbackHandler):
    """Notices whether a call already streamed tokens."""

    run_inline = True

    def __init__(self) -> None:
        self.streamed = False

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        if token:
            self.streamed = True


def sum_usage(usages: list[UsageMetadata]) -> UsageMetadata:
    """Token usage of several calls added up."""
    total = usages[0]
    for usage in usages[1:]:
        total = add_usage(total, usage)
    return total
