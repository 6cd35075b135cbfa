"""``create_moa_graph``: Mixture-of-Agents as a LangGraph ``StateGraph`` (the wiring).

Shape::

    START -> prepare -> [Send one task per proposer of layer 1] -> propose -> collect_layer
          -> [Send layer 2 ...] -> propose -> ... -> [last layer] -> aggregate -> END

``propose`` runs once per proposer (all of a layer at once, under ``invoke`` and ``ainvoke``);
``collect_layer`` is deferred, so it runs once per layer, after every proposer of it finished
and sends the next layer. The aggregator's step, deferred too, joins the last layer itself (one
superstep fewer per run).
Under ``ainvoke`` a timed-out or cut-off call is cancelled; under ``invoke`` the call is
abandoned and stops reading at its next token (see ``moa_graph.engine.calls``). What each node
does is in ``moa_graph.engine.nodes``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from langgraph._internal._runnable import RunnableCallable
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict, Unpack

from moa_graph.engine.nodes import AGGREGATE, COLLECT, PREPARE, PROPOSE, MixtureNodes
from moa_graph.engine.plan import MixturePlan, build_plan
from moa_graph.engine.scope import Mixture
from moa_graph.models import ModelLike
from moa_graph.settings import SETTINGS, MixtureSettingsDict, settings_from, settings_help
from moa_graph.state import MoAInput, MoAOutput, MoAState, Proposal, merge_proposals
from moa_graph.strategies import Strategy

__all__ = ["MoAContext", "build_graph", "create_moa_graph", "is_answer_token", "settle_updates"]


class MoAContext(TypedDict, total=False):
    """Run-time context (``graph.invoke(..., context={...})``), all optional.

    The per-run choices (``layers``, ``proposers``, ``aggregator``, ``aggregator_temperature``
    and the per-run settings ``temperature``, ``aggregation``, ``seed``,
    ``confidence_temperature``, ``staircase``) narrow the configured mixture for one run but
    never add a model; they are checked before any call (``ValueError`` naming the key).
    ``aggregator_kwargs`` go to the final aggregator call (stop words, bound tools);
    ``stream_proposers=True`` puts the proposers' tokens on the ``messages`` stream beside the
    answer's (by default only the answer's arrive there), ``stream_proposers=False`` keeps
    proposers from streaming tokens nobody reads. Other keys are ignored, so a parent graph can
    share its own context with the mixture. Kept equal to the settings declaration
    (``RUN_KEYS``) by a test.

    Example:
        >>> context: MoAContext = {"layers": 2, "proposers": ["qwen"], "temperature": 0.2}
    """

    layers: int
    proposers: list[str]
    aggregator: str
    aggregator_temperature: float
    temperature: float | None
    aggregation: str | Strategy
    seed: int | None
    confidence_temperature: float
    staircase: int | None
    aggregator_kwargs: dict[str, Any]
    stream_proposers: bool


def create_moa_graph(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    **settings: Unpack[MixtureSettingsDict],
) -> StateGraph[MoAState, Any, MoAInput, MoAOutput]:
    """Create the Mixture-of-Agents graph (uncompiled, like ``create_supervisor``).

    Args:
        proposers: models of every proposer layer (a flat list, reused in each layer), or one
            list per proposer layer. Each entry is a chat model, a ``"provider:model"`` string,
            or a ``ProposerSpec``.
        aggregator: the model that writes the final answer.
        layers: layers as counted in the paper, the aggregator's included: ``3`` is the paper's
            MoA (two proposer layers), ``2`` is MoA-Lite. Default 3, or the number of nested
            lists plus one.
        **settings: any mixture setting (``moa_graph.settings.MixtureSettings``; listed
            below with their defaults), typed for mypy and pyright by
            ``moa_graph.settings.MixtureSettingsDict``. An unknown name raises ``ValueError``
            naming the closest one.

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
    plan = build_plan(
        proposers, aggregator=aggregator, layers=layers, settings=settings_from(settings)
    )
    return build_graph(plan)


def build_graph(
    plan: MixturePlan | Mixture,
) -> StateGraph[MoAState, Any, MoAInput, MoAOutput]:
    """Build the ``StateGraph`` for an already validated plan (or a ``Mixture`` of it, whose
    per-run plans, races and call limiter its runs then share with other graphs of it)."""
    nodes = MixtureNodes(plan if isinstance(plan, Mixture) else Mixture(plan))
    graph = StateGraph(
        MoAState, input_schema=MoAInput, output_schema=MoAOutput, context_schema=MoAContext
    )

    def node(func: Callable[..., Any], afunc: Callable[..., Any] | None, name: str) -> Any:
        # LangGraph's own light node runnable: a RunnableLambda would inspect signatures and
        # add a traced run on every call (measured: 1.6x the asyncio baseline at 100 runs at
        # once, against 1.3-1.4x); LangGraph has no public equivalent.
        return RunnableCallable(func, afunc, name=name, trace=False)

    graph.add_node(PREPARE, node(nodes.prepare, None, PREPARE))
    graph.add_node(PROPOSE, node(nodes.propose, nodes.apropose, PROPOSE))
    graph.add_node(COLLECT, node(nodes.collect, None, COLLECT), defer=True)
    graph.add_node(AGGREGATE, node(nodes.aggregate, nodes.aaggregate, AGGREGATE), defer=True)
    graph.add_edge(START, PREPARE)
    # Routing runs inline: a plain function would hop to a worker thread under ``ainvoke``.
    for source, route, targets in (
        (PREPARE, nodes.send_first_layer, [PROPOSE, AGGREGATE]),
        (PROPOSE, nodes.after_propose, [COLLECT, AGGREGATE]),
        (COLLECT, nodes.route_after_layer, [PROPOSE, AGGREGATE]),
        (AGGREGATE, nodes.after_aggregate, [PROPOSE, END]),
    ):
        graph.add_conditional_edges(source, node(route, None, "route"), targets)
    return graph


def is_answer_token(metadata: Mapping[str, Any]) -> bool:
    """Whether a ``stream_mode="messages"`` chunk is part of the final answer: streamed by the
    aggregate node and not by one of its intermediate steps (a window's synthesis, a ranking)."""
    return metadata.get("langgraph_node") == AGGREGATE and metadata.get("moa_step") is None


def settle_updates(
    updates: Mapping[str, Any], proposals: list[Proposal], final: BaseMessage | None
) -> tuple[list[Proposal], BaseMessage | None]:
    """Fold one chunk of a run's ``stream_mode="updates"`` into what the run settled so far: its
    proposals (the prepare step's reset is not one) and, from the aggregate node, the answer."""
    for node, update in updates.items():
        if not update:
            continue
        if "proposals" in update and node != PREPARE:
            proposals = merge_proposals(proposals, update["proposals"])
        if node == AGGREGATE:
            final = update["messages"][-1]
    return proposals, final


def _settings_signature() -> inspect.Signature:
    """``create_moa_graph``'s signature with every setting as a keyword (for ``help()`` and
    editors), derived from the settings declaration."""
    base = inspect.signature(create_moa_graph)
    parameters = [p for p in base.parameters.values() if p.kind != p.VAR_KEYWORD]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=spec.default,
                          annotation=spec.annotation)
        for name, spec in SETTINGS.items()
    ]  # fmt: skip
    return base.replace(parameters=parameters)


create_moa_graph.__signature__ = _settings_signature()  # type: ignore[attr-defined]
create_moa_graph.__doc__ = (create_moa_graph.__doc__ or "") + (
    "\n    Settings:\n" + settings_help("        ") + "\n"
)
