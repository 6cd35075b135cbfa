"""``create_moa_graph``: Mixture-of-Agents as a LangGraph ``StateGraph``.

Shape::

    START -> prepare -> [Send one task per proposer of layer 1] -> propose -> collect_layer
          -> [Send layer 2 ...] -> propose -> collect_layer -> ... -> aggregate -> END

``propose`` runs once per proposer (all of a layer at once, under ``invoke`` and ``ainvoke``);
``collect_layer`` is deferred, so it runs once per layer, after every proposer of it finished.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AnyMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langgraph._internal._runnable import RunnableCallable
from langgraph.errors import GraphBubbleUp
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send
from typing_extensions import TypedDict

from moa_graph.aggregator import bind_aggregator
from moa_graph.errors import AggregatorError, ProposalsFailedError
from moa_graph.models import ModelDefaults, ModelLike
from moa_graph.plan import MixturePlan, ProposerSlot, build_plan
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT, with_system_prompt
from moa_graph.state import (
    CLEAR_PROPOSALS,
    MoAInput,
    MoAOutput,
    MoAState,
    ProgressEvent,
    Proposal,
    ProposerTask,
)

logger = logging.getLogger("moa_graph")

PREPARE, PROPOSE, COLLECT, AGGREGATE = "prepare", "propose", "collect_layer", "aggregate"
PROPOSER_TAG, AGGREGATOR_TAG = "moa:proposer", "moa:aggregator"


class MoAContext(TypedDict, total=False):
    """Run-time context (``graph.invoke(..., context={...})``).

    ``aggregator_kwargs`` are passed to the final aggregator's model call (``stop``, bound tools).
    """

    aggregator_kwargs: dict[str, Any]


def create_moa_graph(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    min_proposals: int = 1,
    temperature: float | None = 0.7,
    max_tokens: int | None = 512,
    timeout: float | None = None,
    max_retries: int | None = None,
) -> StateGraph[MoAState, MoAContext, MoAInput, MoAOutput]:
    """Create the Mixture-of-Agents graph (uncompiled, like ``create_supervisor``).

    Args:
        proposers: models of every proposer layer (a flat list, reused in each layer), or one
            list per proposer layer. Each entry is a chat model, a ``"provider:model"`` string,
            or a ``ProposerSpec``.
        aggregator: the model that writes the final answer.
        layers: layers as counted in the paper, the aggregator's included: ``3`` is the paper's
            MoA (two proposer layers), ``2`` is MoA-Lite. Default 3, or the number of nested
            lists plus one.
        prompt: the Aggregate-and-Synthesize prompt (the paper's Table 1 by default).
        min_proposals: how many proposers of a layer must answer for the run to go on; failed
            proposers are recorded in ``proposals`` and left out of the references.
        temperature: default temperature of models built from strings (reference value 0.7).
        max_tokens: default answer limit of models built from strings (reference value 512).
        timeout: request timeout, seconds, of models built from strings.
        max_retries: retries of models built from strings.

    Returns:
        A ``StateGraph`` with input ``{"messages": [...]}`` and output ``{"messages": [...,
        AIMessage], "proposals": [...]}``. Progress is streamed with ``stream_mode="custom"``.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from langchain_core.messages import AIMessage
        >>> def fake(text):
        ...     return GenericFakeChatModel(messages=iter([AIMessage(text)] * 4))
        >>> graph = create_moa_graph([fake("A"), fake("B")], aggregator=fake("A and B"),
        ...                          layers=2).compile()
        >>> result = graph.invoke({"messages": [("user", "Hi")]})
        >>> result["messages"][-1].content, [p["text"] for p in result["proposals"]]
        ('A and B', ['A', 'B'])
    """
    defaults = ModelDefaults(
        temperature=temperature, max_tokens=max_tokens, timeout=timeout, max_retries=max_retries
    )
    plan = build_plan(
        proposers,
        aggregator=aggregator,
        layers=layers,
        prompt=prompt,
        min_proposals=min_proposals,
        proposer_defaults=defaults,
    )
    return build_graph(plan)


def build_graph(plan: MixturePlan) -> StateGraph[MoAState, MoAContext, MoAInput, MoAOutput]:
    """Build the ``StateGraph`` for an already validated plan."""
    nodes = _MoANodes(plan)
    graph = StateGraph(
        MoAState, input_schema=MoAInput, output_schema=MoAOutput, context_schema=MoAContext
    )
    graph.add_node(PREPARE, RunnableCallable(nodes.prepare, name=PREPARE, trace=False))
    graph.add_node(
        PROPOSE, RunnableCallable(nodes.propose, nodes.apropose, name=PROPOSE, trace=False)
    )
    graph.add_node(COLLECT, RunnableCallable(nodes.collect, name=COLLECT, trace=False), defer=True)
    graph.add_node(
        AGGREGATE, RunnableCallable(nodes.aggregate, nodes.aaggregate, name=AGGREGATE, trace=False)
    )
    graph.add_edge(START, PREPARE)
    graph.add_conditional_edges(PREPARE, nodes.send_first_layer, [PROPOSE])
    graph.add_edge(PROPOSE, COLLECT)
    graph.add_conditional_edges(COLLECT, nodes.route_after_layer, [PROPOSE, AGGREGATE])
    return graph


class _MoANodes:
    """The node and routing functions of one mixture, bound to its plan."""

    def __init__(self, plan: MixturePlan) -> None:
        self.plan = plan
        self.runnables = {
            (slot.layer, slot.index): self._runnable_for(slot)
            for layer in plan.proposer_layers
            for slot in layer
        }
        self.aggregator = bind_aggregator(
            plan.aggregator.model,
            prompt=plan.prompt,
            system_prompt=plan.aggregator.system_prompt,
            name=f"aggregator: {plan.aggregator.name}",
        )

    def _runnable_for(self, slot: ProposerSlot) -> Runnable[Any, BaseMessage]:
        if slot.layer == 1:
            return slot.model
        return bind_aggregator(
            slot.model,
            prompt=self.plan.prompt,
            system_prompt=slot.system_prompt,
            name=_run_name(slot),
        )

    # -- nodes -------------------------------------------------------------------------------

    def prepare(self, state: MoAState) -> dict[str, Any]:
        if not state.get("messages"):
            raise ValueError("messages: the conversation is empty; send at least one message")
        return {"proposals": CLEAR_PROPOSALS}

    def send_first_layer(self, state: MoAState) -> list[Send]:
        return self._sends(1, state["messages"], [])

    def propose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        slot, runnable, call_input = self._start(task, runtime)
        started = time.perf_counter()
        try:
            message = runnable.invoke(call_input, self._proposer_config(slot, config))
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return self._failed(slot, exc, started, runtime)
        return self._finished(slot, message, started, runtime)

    async def apropose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        slot, runnable, call_input = self._start(task, runtime)
        started = time.perf_counter()
        try:
            message = await runnable.ainvoke(call_input, self._proposer_config(slot, config))
        except GraphBubbleUp:
            raise
        except Exception as exc:
            return self._failed(slot, exc, started, runtime)
        return self._finished(slot, message, started, runtime)

    def collect(self, state: MoAState, runtime: Runtime) -> None:
        layer = _current_layer(state["proposals"])
        proposals = [p for p in state["proposals"] if p["layer"] == layer]
        failed = sum(p["error"] is not None for p in proposals)
        _emit(
            runtime,
            moa_event="layer_done",
            layer=layer,
            succeeded=len(proposals) - failed,
            failed=failed,
        )
        if len(proposals) - failed < self.plan.min_proposals:
            raise ProposalsFailedError(layer, proposals, self.plan.min_proposals)

    def route_after_layer(self, state: MoAState) -> list[Send] | str:
        layer = _current_layer(state["proposals"])
        if layer >= len(self.plan.proposer_layers):
            return AGGREGATE
        return self._sends(layer + 1, state["messages"], references(state["proposals"], layer))

    def aggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        runnable, call_input, call_config = self._aggregation(state, config, runtime)
        try:
            message = runnable.invoke(call_input, call_config)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            raise self._aggregator_error(exc) from exc
        return self._aggregated(message, runtime)

    async def aaggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        runnable, call_input, call_config = self._aggregation(state, config, runtime)
        try:
            message = await runnable.ainvoke(call_input, call_config)
        except GraphBubbleUp:
            raise
        except Exception as exc:
            raise self._aggregator_error(exc) from exc
        return self._aggregated(message, runtime)

    # -- helpers shared by the sync and async nodes --------------------------------------------

    def _sends(self, layer: int, messages: list[AnyMessage], refs: list[str]) -> list[Send]:
        return [
            Send(
                PROPOSE,
                ProposerTask(layer=layer, index=slot.index, messages=messages, references=refs),
            )
            for slot in self.plan.proposer_layers[layer - 1]
        ]

    def _start(
        self, task: ProposerTask, runtime: Runtime
    ) -> tuple[ProposerSlot, Runnable[Any, BaseMessage], Any]:
        slot = self.plan.proposer_layers[task["layer"] - 1][task["index"]]
        _emit(runtime, moa_event="proposal_started", **_identity(slot))
        if slot.layer == 1:
            call_input: Any = with_system_prompt(task["messages"], slot.system_prompt)
        else:
            call_input = {"messages": task["messages"], "references": task["references"]}
        return slot, self.runnables[(slot.layer, slot.index)], call_input

    def _proposer_config(self, slot: ProposerSlot, config: RunnableConfig) -> RunnableConfig:
        return merge_configs(
            config,
            {
                "run_name": _run_name(slot),
                "tags": [PROPOSER_TAG, f"moa:layer:{slot.layer}"],
                "metadata": {
                    "moa_layer": slot.layer,
                    "moa_index": slot.index,
                    "moa_proposer": slot.name,
                    "moa_model": slot.model_name,
                },
            },
        )

    def _finished(
        self, slot: ProposerSlot, message: BaseMessage, started: float, runtime: Runtime
    ) -> dict[str, list[Proposal]]:
        latency = time.perf_counter() - started
        _emit(runtime, moa_event="proposal_finished", latency_s=latency, **_identity(slot))
        usage = getattr(message, "usage_metadata", None)
        return {"proposals": [_proposal(slot, message.text, None, usage, latency)]}

    def _failed(
        self, slot: ProposerSlot, exc: Exception, started: float, runtime: Runtime
    ) -> dict[str, list[Proposal]]:
        latency = time.perf_counter() - started
        error = f"{type(exc).__name__}: {exc}"
        logger.warning(
            "proposer %s (%s) of layer %d failed: %s", slot.name, slot.model_name, slot.layer, error
        )
        _emit(
            runtime, moa_event="proposal_failed", latency_s=latency, error=error, **_identity(slot)
        )
        return {"proposals": [_proposal(slot, "", error, None, latency)]}

    def _aggregation(
        self, state: MoAState, config: RunnableConfig, runtime: Runtime
    ) -> tuple[Runnable[Any, BaseMessage], dict[str, Any], RunnableConfig]:
        plan = self.plan
        refs = references(state["proposals"], len(plan.proposer_layers))
        _emit(
            runtime,
            moa_event="aggregation_started",
            layer=plan.layers,
            proposer=plan.aggregator.name,
            model=plan.aggregator.model_name,
        )
        runnable = self.aggregator
        context: MoAContext = runtime.context or {}
        call_kwargs = context.get("aggregator_kwargs")
        if call_kwargs:
            runnable = bind_aggregator(
                plan.aggregator.model.bind(**call_kwargs),
                prompt=plan.prompt,
                system_prompt=plan.aggregator.system_prompt,
                name=f"aggregator: {plan.aggregator.name}",
            )
        call_config = merge_configs(
            config,
            {
                "tags": [AGGREGATOR_TAG, f"moa:layer:{plan.layers}"],
                "metadata": {
                    "moa_layer": plan.layers,
                    "moa_proposer": plan.aggregator.name,
                    "moa_model": plan.aggregator.model_name,
                },
            },
        )
        return runnable, {"messages": state["messages"], "references": refs}, call_config

    def _aggregated(self, message: BaseMessage, runtime: Runtime) -> dict[str, list[BaseMessage]]:
        _emit(
            runtime,
            moa_event="aggregation_finished",
            layer=self.plan.layers,
            proposer=self.plan.aggregator.name,
            model=self.plan.aggregator.model_name,
        )
        return {"messages": [message]}

    def _aggregator_error(self, exc: Exception) -> AggregatorError:
        return AggregatorError(self.plan.aggregator.name, self.plan.aggregator.model_name, exc)


def references(proposals: Sequence[Proposal], layer: int) -> list[str]:
    """The answered texts of ``layer``, in configured order (failed proposers left out).

    Example:
        >>> ps = [{"layer": 1, "index": 1, "text": "b", "error": None},
        ...       {"layer": 1, "index": 0, "text": "a", "error": None},
        ...       {"layer": 1, "index": 2, "text": "", "error": "boom"}]
        >>> references(ps, 1)
        ['a', 'b']
    """
    chosen = [p for p in proposals if p["layer"] == layer and p["error"] is None]
    return [p["text"] for p in sorted(chosen, key=lambda p: p["index"])]


def _current_layer(proposals: Sequence[Proposal]) -> int:
    return max(p["layer"] for p in proposals)


def _run_name(slot: ProposerSlot) -> str:
    return f"proposer {slot.layer}.{slot.index + 1}: {slot.name}"


def _identity(slot: ProposerSlot) -> dict[str, Any]:
    return {
        "layer": slot.layer,
        "index": slot.index,
        "proposer": slot.name,
        "model": slot.model_name,
    }


def _proposal(
    slot: ProposerSlot,
    text: str,
    error: str | None,
    usage: Mapping[str, Any] | None,
    latency: float,
) -> Proposal:
    return Proposal(
        layer=slot.layer,
        index=slot.index,
        proposer=slot.name,
        model=slot.model_name,
        text=text,
        error=error,
        usage=dict(usage) if usage else None,
        latency_s=round(latency, 6),
    )


def _emit(runtime: Runtime | None, **event: Any) -> None:
    if runtime is not None:
        runtime.stream_writer(ProgressEvent(**event))  # type: ignore[typeddict-item]
