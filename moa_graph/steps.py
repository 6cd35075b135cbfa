"""One proposer call and one aggregator call, as the graph's nodes make them.

Each object gathers what a call needs (model, input, traced config, the layer's race) and turns
its outcome into the state update and progress events; the nodes only choose sync or async.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    BaseMessageChunk,
    UsageMetadata,
    message_chunk_to_message,
)
from langchain_core.messages.ai import add_usage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime

from moa_graph.aggregation import VoteCount, call_seed, count_votes, shuffled, windows
from moa_graph.aggregator import bind_aggregator
from moa_graph.answers import extract_number
from moa_graph.calls import CallCancelled, cancel_requested
from moa_graph.errors import AggregatorError
from moa_graph.plan import ProposerSlot
from moa_graph.prompts import with_system_prompt
from moa_graph.ranking import instruction_text, parse_ranker_choice, ranker_messages
from moa_graph.redact import redacting_callbacks
from moa_graph.references import Truncation
from moa_graph.runtime_config import check_aggregator_kwargs, context_values
from moa_graph.state import ProgressEvent, Proposal, ProposerTask
from moa_graph.tool_rendering import render_tool_turns

if TYPE_CHECKING:
    from moa_graph.graph import _MoANodes
    from moa_graph.state import MoAState

logger = logging.getLogger("moa_graph")
PROPOSER_TAG, AGGREGATOR_TAG = "moa:proposer", "moa:aggregator"


class ProposerCall:
    """One proposer's call in one run."""

    def __init__(
        self, nodes: _MoANodes, task: ProposerTask, config: RunnableConfig, runtime: Runtime
    ) -> None:
        plan, runnables = nodes.run_plan(runtime)
        layer = plan.proposer_layers[task["layer"] - 1]
        self.slot = slot = next(s for s in layer if s.index == task["index"])
        self.nodes, self.runtime = nodes, runtime
        self.race = (
            nodes.races.race(task["run_id"], slot.layer, len(layer))
            if nodes.races.rules.can_stop_early
            else None
        )
        self.runnable = runnables[(slot.layer, slot.index)]
        conversation = render_tool_turns(task["messages"])  # proposers never see tool turns
        references, self.shuffle = task["references"], {}
        if plan.options.shuffle_references and len(references) > 1:
            seed = call_seed(plan.options.seed, slot.layer, slot.index)
            references, order = shuffled(references, seed)
            self.shuffle = {"reference_order": order, "shuffle_seed": seed}
        self.input: Any = (
            with_system_prompt(conversation, slot.system_prompt)
            if slot.layer == 1
            else {"messages": conversation, "references": references}
        )
        metadata = {"moa_layer": slot.layer, "moa_index": slot.index, "moa_proposer": slot.name,
                    "moa_model": slot.model_name}  # fmt: skip
        metadata.update({f"moa_{key}": value for key, value in self.shuffle.items()})
        self.config = merge_configs(
            config,
            {
                "run_name": run_name(slot),
                "tags": [PROPOSER_TAG, f"moa:layer:{slot.layer}"],
                "metadata": metadata,
            },
        )
        callbacks = self.config.get("callbacks")
        if context_values(runtime.context).get("stream_proposers") is False:
            callbacks = without_token_streaming(callbacks)
        self.config["callbacks"] = redacting_callbacks(callbacks, plan.secrets)
        self.attempts = 0
        self.started = time.perf_counter()
        if self.race is None or not self.race.stopped:
            emit(runtime, moa_event="proposal_started", **identity(slot))

    def attempt_sync(self) -> BaseMessage:
        self.attempts += 1
        with self.nodes.limiter.sync_slot():
            if self.race is None:
                return self.runnable.invoke(self.input, self.config)
            return invoke_until_cancelled(self.runnable, self.input, self.config)

    async def attempt_async(self) -> BaseMessage:
        self.attempts += 1
        async with self.nodes.limiter.async_slot():
            return await self.runnable.ainvoke(self.input, self.config)

    def on_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        emit(self.runtime, moa_event="proposal_retrying", attempt=attempt, delay_s=delay,
             error=self.nodes.describe(error), **identity(self.slot))  # fmt: skip

    def outcome(
        self, *, message: BaseMessage | None = None, error: BaseException | None = None
    ) -> dict[str, list[Proposal]]:
        """The state update for this call: answered, failed or cancelled (no message, no error
        or ``CallCancelled``)."""
        slot, latency = self.slot, round(time.perf_counter() - self.started, 6)
        base = {**identity(slot), "latency_s": latency}
        if message is not None:
            if self.race is not None:
                self.race.answered()
            emit(self.runtime, moa_event="proposal_finished", **base)
            usage = getattr(message, "usage_metadata", None)
            return {"proposals": [self._proposal("answered", message.text, None, usage, latency)]}
        if error is None or isinstance(error, CallCancelled):
            reason = error.reason if isinstance(error, CallCancelled) else self._race_reason()
            status, text = "cancelled", f"cancelled: {reason}"
            if self.race is not None:
                self.race.cancelled()
        else:
            status, text = "failed", self.nodes.describe(error)
            if self.race is not None:
                self.race.failed()
            logger.warning("proposer %s (%s) of layer %d failed: %s", slot.name,
                           slot.model_name, slot.layer, text)  # fmt: skip
        emit(self.runtime, moa_event="proposal_failed", error=text, **base)
        return {"proposals": [self._proposal(status, "", text, None, latency)]}

    def _race_reason(self) -> str:
        return (self.race.reason if self.race is not None else None) or "not started"

    def _proposal(
        self, status: str, text: str, error: str | None, usage: Mapping[str, Any] | None,
        latency: float,
    ) -> Proposal:  # fmt: skip
        slot = self.slot
        proposal = Proposal(
            layer=slot.layer, index=slot.index, proposer=slot.name, model=slot.model_name,
            status=status,  # type: ignore[typeddict-item]
            text=text, error=error, usage=dict(usage) if usage else None, latency_s=latency,
            attempts=self.attempts,
        )  # fmt: skip
        proposal.update(self.shuffle)  # type: ignore[typeddict-item]
        return proposal


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
        if self.consensus is None:
            emit(runtime, moa_event="aggregation_started", **self.identity)

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
        if self.consensus is None:
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


def invoke_until_cancelled(
    runnable: Runnable[Any, BaseMessage], call_input: Any, config: RunnableConfig
) -> BaseMessage:
    """Stream the call and stop reading (closing the connection) once the caller gave up."""
    merged: BaseMessageChunk | None = None
    chunks = runnable.stream(call_input, config)
    try:
        for chunk in chunks:
            if cancel_requested():
                raise CallCancelled("the layer stopped waiting")
            merged = chunk if merged is None else merged + chunk  # type: ignore[assignment]
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # closes the HTTP response at once, not when the generator is collected
    if merged is None:
        raise RuntimeError("the model streamed nothing")
    return message_chunk_to_message(merged)


def run_name(slot: ProposerSlot) -> str:
    return f"proposer {slot.layer}.{slot.index + 1}: {slot.name}"


def identity(slot: ProposerSlot) -> dict[str, Any]:
    return {"layer": slot.layer, "index": slot.index, "proposer": slot.name,
            "model": slot.model_name}  # fmt: skip


def truncation_record(cut: Truncation) -> dict[str, int]:
    return {"layer": cut.layer, "index": cut.index, "tokens": cut.tokens,
            "kept_tokens": cut.kept_tokens}  # fmt: skip


def emit(runtime: Runtime | None, **event: Any) -> None:
    if runtime is not None:
        runtime.stream_writer(ProgressEvent(**event))  # type: ignore[typeddict-item]


def sum_usage(usages: list[UsageMetadata]) -> UsageMetadata:
    """Token usage of several calls added up."""
    total = usages[0]
    for usage in usages[1:]:
        total = add_usage(total, usage)
    return total


def without_token_streaming(callbacks: Any) -> Any:
    """A copy of a callback manager without the handlers that make chat models stream.

    LangGraph's ``stream_mode="messages"`` handler makes every model call stream token by
    token; a proposer whose tokens nobody reads then pays for it on the critical path.
    """
    if not isinstance(callbacks, BaseCallbackManager):
        return callbacks
    handlers = callbacks.handlers + callbacks.inheritable_handlers
    if not any(isinstance(h, _StreamingCallbackHandler) for h in handlers):
        return callbacks
    manager = callbacks.copy()
    manager.handlers = [h for h in manager.handlers if not isinstance(h, _StreamingCallbackHandler)]
    manager.inheritable_handlers = [
        h for h in manager.inheritable_handlers if not isinstance(h, _StreamingCallbackHandler)
    ]
    return manager
