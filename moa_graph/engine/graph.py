"""``create_moa_graph``: Mixture-of-Agents as a LangGraph ``StateGraph``.

Shape::

    START -> prepare -> [Send one task per proposer of layer 1] -> propose -> collect_layer
          -> [Send layer 2 ...] -> propose -> collect_layer -> ... -> aggregate -> END

``propose`` runs once per proposer (all of a layer at once, under ``invoke`` and ``ainvoke``);
``collect_layer`` is deferred, so it runs once per layer, after every proposer of it finished.
Under ``ainvoke`` a timed-out or cut-off call is cancelled; under ``invoke`` the call is
abandoned and stops reading at its next token (see ``moa_graph.engine.calls``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langgraph._internal._runnable import RunnableCallable
from langgraph.errors import GraphBubbleUp
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from moa_graph.aggregation import Aggregation, VoteCount, count_votes
from moa_graph.aggregator import bind_aggregator
from moa_graph.answers import Extractor
from moa_graph.engine.calls import call_async, call_sync
from moa_graph.engine.final_answer import AggregatorCall
from moa_graph.engine.limits import CallLimiter
from moa_graph.engine.plan import FailMode, MixturePlan, ProposerSlot, plan_from_settings
from moa_graph.engine.proposer_call import (
    AGGREGATOR_TAG,
    PROPOSER_TAG,
    ProposerCall,
    emit,
    run_name,
    truncation_record,
)
from moa_graph.engine.race import RaceRegistry
from moa_graph.engine.references import (
    TokenCounter,
    Truncation,
    answered,
    approximate_tokens,
    fit_to_budget,
)
from moa_graph.engine.run_choices import (
    RunChoices,
    answer_must_be_written,
    check_aggregator_kwargs,
    context_values,
    run_key,
    run_plan,
)
from moa_graph.errors import ProposalsFailedError
from moa_graph.models import ModelLike
from moa_graph.prompts import AGGREGATE_AND_SYNTHESIZE_PROMPT
from moa_graph.redact import redact
from moa_graph.state import CLEAR_PROPOSALS, MoAInput, MoAOutput, MoAState, Proposal, ProposerTask
from moa_graph.validation import DEFAULT_MAX_INPUT_CHARS, validate_conversation

PREPARE, PROPOSE, COLLECT, AGGREGATE = "prepare", "propose", "collect_layer", "aggregate"
_MAX_VARIANTS = 64
"""Per-run plans kept per graph (each distinct context choice builds one)."""
_Runnables = dict[tuple[int, int], Runnable[Any, BaseMessage]]
__all__ = [
    "AGGREGATOR_TAG",
    "PROPOSER_TAG",
    "MoAContext",
    "build_graph",
    "create_moa_graph",
    "is_answer_token",
]


class MoAContext(RunChoices, total=False):
    """Run-time context (``graph.invoke(..., context={...})``), every key optional.

    ``layers``, ``proposers`` (names), ``temperature``, ``aggregator`` (a configured model's
    name) and ``aggregator_temperature`` narrow the configured mixture for one run but never add
    a model; they are checked before any call (``ValueError`` naming the key). Other keys are
    ignored, so a parent graph's own context can be shared with the mixture.

    Example:
        >>> context: MoAContext = {"layers": 2, "proposers": ["qwen"], "temperature": 0.2}
    """

    aggregator_kwargs: dict[str, Any]
    """Passed to the final aggregator's model call (``stop``, bound tools)."""
    stream_proposers: bool
    """``False``: proposers do not stream tokens (``stream_mode="messages"`` then carries only
    the final answer's), which saves their per-token work; default ``True``."""


def create_moa_graph(
    proposers: Sequence[ModelLike] | Sequence[Sequence[ModelLike]],
    *,
    aggregator: ModelLike,
    layers: int | None = None,
    prompt: str = AGGREGATE_AND_SYNTHESIZE_PROMPT,
    temperature: float | None = 0.7,
    max_tokens: int | None = 512,
    timeout: float | None = 120.0,
    max_retries: int = 2,
    min_proposals: int = 1,
    fail_mode: FailMode = "best_effort",
    first_k: int | None = None,
    layer_timeout: float | None = None,
    fallback_to_aggregator: bool = False,
    max_reference_tokens: int | None = None,
    token_counter: TokenCounter = approximate_tokens,
    rate_limits: Mapping[str, float] | None = None,
    max_concurrent_calls: int | None = None,
    max_input_chars: int = DEFAULT_MAX_INPUT_CHARS,
    aggregation: Aggregation = "synthesize",
    answer_extractor: str | Extractor | None = None,
    shuffle_references: bool = False,
    seed: int | None = None,
    aggregation_window: int | None = None,
    early_exit: bool = False,
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
        temperature: default temperature of models built from strings (reference value 0.7).
        max_tokens: default answer limit of models built from strings (reference value 512).
        timeout: seconds one call may take before it is cancelled (every model; ``None`` for
            no limit). Models built from strings also use it as their HTTP timeout.
        max_retries: retries of transient errors (429, 5xx, connection errors, empty or
            malformed answers) with exponential backoff and jitter, honouring ``Retry-After``.
        min_proposals: proposers of a layer that must answer for the run to go on; failed
            proposers are recorded in ``proposals`` and left out of the references.
        fail_mode: ``"best_effort"`` (go on while ``min_proposals`` answered) or
            ``"fail_fast"`` (the first failure cancels the layer and fails the run).
        first_k: stop waiting once this many proposers of a layer answered and cancel the
            rest (straggler cut-off); ``None`` waits for all.
        layer_timeout: seconds a proposer layer may take; unfinished proposers are cancelled.
        fallback_to_aggregator: below quorum, go straight to the aggregator with the answers
            there are (or none: it then answers alone); the final message's
            ``response_metadata["moa_fallback"]`` says so.
        max_reference_tokens: token budget of the references given to one call; longer
            references are cut to an equal share each (see ``moa_graph.engine.references``), and the
            cut is recorded.
        token_counter: counts tokens for that budget (default: about four characters a token).
        rate_limits: requests per second per provider (``{"together": 5}``) for models built
            from strings.
        max_concurrent_calls: cap on this mixture's calls in flight at once.
        max_input_chars: longest conversation accepted, in characters.
        aggregation: how the final answer is made (see ``moa_graph.aggregation``):
            ``"synthesize"`` (the paper's), ``"vote"`` (the most common final answer, its first
            reference verbatim; ties go to the aggregator), ``"rank"`` (the aggregator picks a
            reference, returned verbatim) or ``"synthesize_with_votes"`` (the aggregator is
            told how the final answers split).
        answer_extractor: reads a reply's final answer for voting and early exit:
            ``"number"`` (the default when one is needed), ``"choice"`` (A-E) or a function
            ``str -> str | None``.
        shuffle_references: show each aggregating call the references in an order drawn
            per call (against position bias); the order and seed are recorded.
        seed: makes runs reproducible: the shuffles derive from it, and sample k of a model is
            called with ``seed=seed + k`` (the aggregator with ``seed``), for providers that
            accept a seed (OpenAI-compatible servers, local models).
        aggregation_window: Self-MoA-Seq: synthesize at most this many references per call,
            sliding over the rest with the previous synthesis as the first reference.
        early_exit: when every proposer of a layer states the same final answer, skip the
            remaining layers and the aggregator (``response_metadata["moa_early_exit"]`` records
            the layer and the calls saved).

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
    plan = plan_from_settings(
        proposers,
        aggregator=aggregator,
        layers=layers,
        prompt=prompt,
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        max_retries=max_retries,
        rate_limits=rate_limits,
        min_proposals=min_proposals,
        fail_mode=fail_mode,
        first_k=first_k,
        layer_timeout=layer_timeout,
        fallback_to_aggregator=fallback_to_aggregator,
        max_reference_tokens=max_reference_tokens,
        token_counter=token_counter,
        max_concurrent_calls=max_concurrent_calls,
        max_input_chars=max_input_chars,
        aggregation=aggregation,
        answer_extractor=answer_extractor,
        shuffle_references=shuffle_references,
        seed=seed,
        aggregation_window=aggregation_window,
        early_exit=early_exit,
    )
    return build_graph(plan)


def build_graph(plan: MixturePlan) -> StateGraph[MoAState, MoAContext, MoAInput, MoAOutput]:
    """Build the ``StateGraph`` for an already validated plan."""
    nodes = _MoANodes(plan)
    graph = StateGraph(
        MoAState, input_schema=MoAInput, output_schema=MoAOutput, context_schema=MoAContext
    )

    def node(func: Callable[..., Any], afunc: Callable[..., Any] | None, name: str) -> Any:
        return RunnableCallable(func, afunc, name=name, trace=False)

    graph.add_node(PREPARE, node(nodes.prepare, None, PREPARE))
    graph.add_node(PROPOSE, node(nodes.propose, nodes.apropose, PROPOSE))
    graph.add_node(COLLECT, node(nodes.collect, None, COLLECT), defer=True)
    graph.add_node(AGGREGATE, node(nodes.aggregate, nodes.aaggregate, AGGREGATE))
    graph.add_edge(START, PREPARE)
    # Routing runs inline: a plain function would hop to a worker thread under ``ainvoke``.
    graph.add_conditional_edges(PREPARE, node(nodes.send_first_layer, None, "route"), [PROPOSE])
    graph.add_edge(PROPOSE, COLLECT)
    graph.add_conditional_edges(
        COLLECT, node(nodes.route_after_layer, None, "route"), [PROPOSE, AGGREGATE]
    )
    return graph


class _MoANodes:
    """The node and routing functions of one mixture, bound to its plan."""

    def __init__(self, plan: MixturePlan) -> None:
        self.plan = plan
        self.options = plan.options
        self.runnables = self._runnables(plan)
        self._variants: dict[tuple[Any, ...], tuple[MixturePlan, _Runnables]] = {}
        self.races = RaceRegistry(plan.options.race_rules)
        self.limiter = CallLimiter(plan.options.max_concurrent_calls)

    def run_plan(self, runtime: Runtime | None) -> tuple[MixturePlan, _Runnables]:
        """The plan of this run (narrowed by its context) and its proposer runnables."""
        context = runtime.context if runtime is not None else None
        key = run_key(context)
        if key is None:
            return self.plan, self.runnables
        variant = self._variants.get(key)
        if variant is None:
            plan = run_plan(self.plan, context)
            variant = (plan, self._runnables(plan))
            if len(self._variants) >= _MAX_VARIANTS:
                self._variants.clear()
            self._variants[key] = variant
        return variant

    def _runnables(self, plan: MixturePlan) -> _Runnables:
        return {
            (slot.layer, slot.index): self._runnable_for(slot)
            for layer in plan.proposer_layers
            for slot in layer
        }

    def _runnable_for(self, slot: ProposerSlot) -> Runnable[Any, BaseMessage]:
        model = slot.model
        if self.options.seed is not None:  # sample k of a model draws with seed + k
            model = model.bind(seed=self.options.seed + slot.sample)
        if slot.layer == 1:
            return model
        return bind_aggregator(
            model,
            prompt=self.plan.prompt,
            system_prompt=slot.system_prompt,
            name=run_name(slot),
        )

    # -- nodes ---------------------------------------------------------------------------------

    def prepare(self, state: MoAState, runtime: Runtime) -> dict[str, Any]:
        self.run_plan(runtime)  # a bad per-run choice fails here, before any call
        check_aggregator_kwargs(context_values(runtime.context).get("aggregator_kwargs") or {})
        validate_conversation(
            state.get("messages", []), max_input_chars=self.options.max_input_chars
        )
        return {"proposals": CLEAR_PROPOSALS, "run_id": uuid.uuid4().hex}

    def send_first_layer(self, state: MoAState, runtime: Runtime) -> list[Send]:
        return self._sends(1, state, [], self.run_plan(runtime)[0])

    def propose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        call = ProposerCall(self, task, config, runtime)
        if call.race is not None and call.race.stopped:
            return call.outcome()
        try:
            message = call_sync(call.attempt_sync, call.slot.policy, race=call.race,
                                on_retry=call.on_retry)  # fmt: skip
        except GraphBubbleUp:
            raise
        except Exception as error:
            return call.outcome(error=error)
        return call.outcome(message=message)

    async def apropose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        call = ProposerCall(self, task, config, runtime)
        if call.race is not None and call.race.stopped:
            return call.outcome()
        try:
            message = await call_async(call.attempt_async, call.slot.policy, race=call.race,
                                       on_retry=call.on_retry)  # fmt: skip
        except GraphBubbleUp:
            raise
        except Exception as error:
            return call.outcome(error=error)
        return call.outcome(message=message)

    def collect(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> None:
        layer = _current_layer(state["proposals"])
        proposals = [p for p in state["proposals"] if p["layer"] == layer]
        counts = {status: sum(p["status"] == status for p in proposals)
                  for status in ("answered", "failed", "cancelled")}  # fmt: skip
        emit(runtime, moa_event="layer_done", layer=layer, succeeded=counts["answered"],
              failed=counts["failed"], cancelled=counts["cancelled"])  # fmt: skip
        if self._retry_on_resume(proposals, config):
            return  # the routing sends the failed proposers again
        failed = self._layer_failed(proposals)
        if failed and not self.options.fallback_to_aggregator:
            raise ProposalsFailedError(layer, proposals, self.options.min_proposals)
        if layer < len(self.run_plan(runtime)[0].proposer_layers) and not failed:
            self._references(state, layer, runtime)  # reports any truncation once

    def route_after_layer(
        self, state: MoAState, config: RunnableConfig, runtime: Runtime
    ) -> list[Send] | str:
        layer = _current_layer(state["proposals"])
        proposals = [p for p in state["proposals"] if p["layer"] == layer]
        plan = self.run_plan(runtime)[0]
        if self._retry_on_resume(proposals, config):
            failed = {p["index"] for p in proposals if p["status"] == "failed"}
            refs = self._references(state, layer - 1, None) if layer > 1 else []
            return [send for send in self._sends(layer, state, refs, plan)
                    if send.arg["index"] in failed]  # fmt: skip
        if layer >= len(plan.proposer_layers) or self._layer_failed(proposals):
            return AGGREGATE
        if self.consensus(state, runtime):
            return AGGREGATE
        return self._sends(layer + 1, state, self._references(state, layer, None), plan)

    def _layer_failed(self, proposals: Sequence[Proposal]) -> bool:
        """Whether a layer's answers fall below ``min_proposals`` (or any failed, fail-fast)."""
        answered = sum(p["status"] == "answered" for p in proposals)
        failed = any(p["status"] == "failed" for p in proposals)
        return answered < self.options.min_proposals or (
            self.options.fail_mode == "fail_fast" and failed
        )

    def _retry_on_resume(self, proposals: Sequence[Proposal], config: RunnableConfig) -> bool:
        """Whether this step resumes a thread whose run failed at this layer (``proposals``, the
        latest layer's): then the failed proposers are called again (LangGraph saved them as
        finished tasks, so resuming would otherwise only repeat the error)."""
        if not config.get("configurable", {}).get(_RESUMING):
            return False
        return self._layer_failed(proposals) and any(p["status"] == "failed" for p in proposals)

    def aggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        call = AggregatorCall(self, state, config, runtime)
        request = call.start()
        while request is not None:
            with call.failures_reported():
                message = call_sync(partial(call.attempt_sync, request),
                                    call.plan.aggregator.policy, on_retry=call.on_retry,
                                    can_retry=call.can_retry)  # fmt: skip
            request = call.resume(message)
        return call.result()

    async def aaggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        call = AggregatorCall(self, state, config, runtime)
        request = call.start()
        while request is not None:
            with call.failures_reported():
                message = await call_async(partial(call.attempt_async, request),
                                           call.plan.aggregator.policy, on_retry=call.on_retry,
                                           can_retry=call.can_retry)  # fmt: skip
            request = call.resume(message)
        return call.result()

    def consensus(self, state: MoAState, runtime: Runtime) -> tuple[int, VoteCount] | None:
        """With ``early_exit``: the latest layer and its vote when every proposer of it answered
        and all state the same final answer (``None`` otherwise, and whenever tools or an
        output format are bound to the aggregator)."""
        extractor = self.options.extractor
        if not self.options.early_exit or extractor is None:
            return None
        if answer_must_be_written(runtime.context):  # tools or a schema bound: no shortcut
            return None
        layer = _current_layer(state["proposals"])
        proposals = [p for p in state["proposals"] if p["layer"] == layer]
        if any(p["status"] != "answered" for p in proposals):
            return None
        count = count_votes([p["text"] for p in proposals], extractor)
        return (layer, count) if count.unanimous else None

    # -- proposers ---------------------------------------------------------------------------

    def _sends(self, layer: int, state: MoAState, refs: list[str], plan: MixturePlan) -> list[Send]:
        return [
            Send(PROPOSE, ProposerTask(run_id=state["run_id"], layer=layer, index=slot.index,
                                       messages=state["messages"], references=refs))
            for slot in plan.proposer_layers[layer - 1]
        ]  # fmt: skip

    def describe(self, error: BaseException) -> str:
        """The error as recorded: type and message, secrets masked."""
        return redact(f"{type(error).__name__}: {error}", self.plan.secrets)

    # -- references and the aggregator -------------------------------------------------------

    def _references(self, state: MoAState, layer: int, runtime: Runtime | None) -> list[str]:
        return self._fit(answered(state["proposals"], layer), layer, runtime)[0]

    def _fit(
        self, chosen: list[Proposal], layer: int, runtime: Runtime | None
    ) -> tuple[list[str], list[Truncation]]:
        """Fit references to the budget, reporting any cut when ``runtime`` is given."""
        texts, cuts = fit_to_budget(chosen, self.options.max_reference_tokens,
                                    self.options.token_counter)  # fmt: skip
        if cuts and runtime is not None:
            emit(runtime, moa_event="references_truncated", layer=layer,
                 truncations=[truncation_record(cut) for cut in cuts])  # fmt: skip
        return texts, cuts

    def final_references(
        self, state: MoAState, runtime: Runtime
    ) -> tuple[list[str], list[Truncation], str | None]:
        """References for the aggregator, and why it is a fallback (``None`` when it is not)."""
        proposals, plan = state["proposals"], self.run_plan(runtime)[0]
        reached = _current_layer(proposals)
        for layer in range(reached, 0, -1):
            chosen = answered(proposals, layer)
            if not chosen:
                continue
            texts, cuts = self._fit(chosen, layer, runtime)
            complete = layer == len(plan.proposer_layers) and len(chosen) >= (
                self.options.min_proposals
            )
            reason = None if complete else (
                f"the aggregator used the {len(chosen)} answer(s) of layer {layer} after "
                f"layer {reached} fell below min_proposals={self.options.min_proposals}"
            )  # fmt: skip
            return texts, cuts, reason
        return [], [], "every proposer failed: the aggregator answered alone"


def is_answer_token(metadata: Mapping[str, Any]) -> bool:
    """Whether a ``stream_mode="messages"`` chunk is part of the final answer: streamed by the
    aggregate node and not by one of its intermediate steps (a window's synthesis, a ranking)."""
    return metadata.get("langgraph_node") == AGGREGATE and metadata.get("moa_step") is None


#: LangGraph's configurable flag set during the first step of a resumed thread
#: (``langgraph._internal._constants.CONFIG_KEY_RESUMING``).
_RESUMING = "__pregel_resuming"


def _current_layer(proposals: Sequence[Proposal]) -> int:
    return max(p["layer"] for p in proposals)
