"""The final answer of a run: the strategy's aggregator call(s), or an answer chosen without one.

``FinalAnswer`` runs the run's aggregation strategy (``moa_graph.strategies``): it gives
the strategy its steps (``FinalAnswerSteps``: a synthesis, a ranker call, a vote count, a
reference taken verbatim), hands the graph's aggregate node each model call to make (sync or
async, with retries) and turns the result into the final message with its metadata. Before any
strategy, a unanimous layer under ``early_exit`` answers at once, and a run whose proposers all
failed (with ``fallback_to_aggregator``) lets the aggregator answer alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, UsageMetadata
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs

from moa_graph import strategies
from moa_graph.aggregation import VoteCount, call_seed, count_votes, shuffled
from moa_graph.aggregator import bind_aggregator
from moa_graph.answers import extract_number
from moa_graph.engine.events import AGGREGATOR_TAG, aggregator_identity, emit
from moa_graph.engine.plan import MixturePlan
from moa_graph.engine.runner import ModelCall, Steps
from moa_graph.engine.scope import RunScope
from moa_graph.prompts import with_system_prompt
from moa_graph.redact import redacting_callbacks
from moa_graph.state import MoAState
from moa_graph.strategies.base import AggregationFlow
from moa_graph.strategies.rank import instruction_text
from moa_graph.tokens import sum_usage

FALLBACK_STRATEGY = "synthesize_with_votes"
"""Used instead of a strategy that picks a reference when the answer must be written (a run
binds tools or an output format: a reference returned verbatim cannot honour them)."""


class FinalAnswer:
    """How the final answer of one run is made (see the module docstring).

    ``steps()`` makes it, under ``moa_graph.engine.runner``'s drivers.
    """

    def __init__(self, scope: RunScope, state: MoAState, config: RunnableConfig) -> None:
        self.scope = scope
        self.plan = plan = scope.plan
        options = plan.options
        self.runtime, self.state = scope.runtime, state
        proposals = state["proposals"]
        refs, self.cuts, self.fallback, chosen = scope.final_references(proposals)
        confidences = [p.get("confidence") for p in chosen]
        self.identity = aggregator_identity(plan)
        self.consensus = scope.consensus(proposals)
        if self.consensus is not None:  # layers were skipped on purpose, not lost
            self.fallback = None
        self.order = list(range(len(refs)))
        self.shuffle_seed: int | None = None
        if options.shuffle_references and len(refs) > 1 and self.consensus is None:
            self.shuffle_seed = call_seed(options.seed, plan.layers, 0)
            refs, self.order = shuffled(refs, self.shuffle_seed)
            confidences = [confidences[i] for i in self.order]
        self.refs, self.confidences = refs, confidences
        self.confidence_temperature = options.confidence_temperature
        self.aggregation_window = options.aggregation_window
        self.model = scope.aggregator_model()
        self.watcher = TokenWatcher()
        self.base_config = config
        self.extra: dict[str, Any] = {"moa_aggregation": plan.strategy.name}
        self.usage: list[UsageMetadata] = []
        self.calls = 0

    # -- the decision --------------------------------------------------------------------------

    def flow(self) -> AggregationFlow:
        """The final answer: early exit, the aggregator alone, or the run's strategy."""
        if self.consensus is not None:
            return self._early_exit(*self.consensus)
        if not self.refs and self.fallback is not None:  # every proposer failed
            name = f"aggregator: {self.plan.aggregator.name}"
            alone = with_system_prompt(self.state["messages"], self.plan.aggregator.system_prompt)
            return (yield self._request(self.model.with_config(run_name=name), alone))
        strategy = self.plan.strategy
        if strategy.picks_reference and self.scope.answer_must_be_written:
            strategy = strategies.get(FALLBACK_STRATEGY)
            self.extra["moa_aggregation"] = strategy.name
        return (yield from strategy.flow(self))

    def _early_exit(self, layer: int, count: VoteCount) -> BaseMessage:
        saved = sum(len(slots) for slots in self.plan.proposer_layers[layer:]) + 1
        self.extra["moa_early_exit"] = {"layer": layer, "answer": count.winner,
                                        "calls_saved": saved}  # fmt: skip
        emit(self.runtime, moa_event="early_exit", layer=layer, calls_saved=saved)
        return AIMessage(self.refs[0])

    # -- the steps a strategy takes (``FinalAnswerSteps``) -------------------------------------

    def synthesis(self, texts: list[str], note: str | None = None, *, step: str | None = None
                  ) -> ModelCall:  # fmt: skip
        runnable = bind_aggregator(self.model, prompt=self.plan.prompt,
                                   name=f"aggregator: {self.plan.aggregator.name}",
                                   system_prompt=self.plan.aggregator.system_prompt)  # fmt: skip
        call_input: dict[str, Any] = {"messages": self.state["messages"], "references": texts}
        if note:
            call_input["note"] = note
        return self._request(runnable, call_input, step=step)

    def ask_aggregator(self, messages: Sequence[BaseMessage], *, role: str, step: str
                       ) -> ModelCall:  # fmt: skip
        name = f"{role}: {self.plan.aggregator.name}"
        return self._request(self.model.with_config(run_name=name), list(messages), step=step)

    def instruction(self) -> str:
        return instruction_text(self.state["messages"])

    def votes(self, texts: Sequence[str]) -> VoteCount:
        return count_votes(texts, self.plan.extractor or extract_number)

    def verbatim(self, position: int) -> BaseMessage:
        self.extra["moa_chosen"] = self.order[position]
        return AIMessage(self.refs[position])

    def window_positions(self, groups: list[list[int]]) -> list[list[int]]:
        return [[self.order[position] for position in group] for group in groups]

    def _request(self, runnable: Runnable[Any, BaseMessage], call_input: Any,
                 step: str | None = None) -> ModelCall:  # fmt: skip
        """A call; ``step`` names a call whose answer is not the final one (kept off the
        ``messages`` stream unless the run streams proposers)."""
        if not self.calls:
            emit(self.runtime, moa_event="aggregation_started", **self.identity)
        self.calls += 1
        metadata: dict[str, Any] = {}
        if step is not None:
            metadata["moa_step"] = step
        if self.shuffle_seed is not None:
            metadata.update(moa_reference_order=self.order, moa_shuffle_seed=self.shuffle_seed)
        watchers = [self.watcher] if step is None else []
        config = aggregator_config(self.plan, self.base_config, metadata, watchers)
        if step is not None:
            config["tags"] = [*config.get("tags", []), *self.scope.not_answer_tags]
        return ModelCall(runnable, call_input, config, self.plan.aggregator.policy,
                         on_retry=self.on_retry, can_retry=self.can_retry)  # fmt: skip

    # -- driving the flow ----------------------------------------------------------------------

    def steps(self) -> Steps[dict[str, list[BaseMessage]]]:
        """The strategy's flow, each call it needs handed to the runner; returns the state
        update with the final message."""
        flow = self.flow()
        reply: BaseMessage | None = None
        while True:
            try:
                call = next(flow) if reply is None else flow.send(reply)
            except StopIteration as finished:
                return self.result(finished.value)
            with self.scope.aggregator_failures():
                reply = yield call
            if usage := getattr(reply, "usage_metadata", None):
                self.usage.append(usage)  # the final message carries every step's usage

    def can_retry(self) -> bool:
        """No retry once tokens were streamed: the caller would see them twice."""
        return not self.watcher.streamed

    def on_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        emit(self.runtime, moa_event="proposal_retrying", attempt=attempt, delay_s=delay,
             error=self.scope.describe(error), **self.identity)  # fmt: skip

    def result(self, message: BaseMessage) -> dict[str, list[BaseMessage]]:
        """The state update with the final ``message``."""
        if self.calls:  # a vote, a single reference or an early exit needs no aggregator call
            emit(self.runtime, moa_event="aggregation_finished", **self.identity)
        extra = dict(self.extra)
        if self.fallback:
            extra["moa_fallback"] = self.fallback
        if self.cuts:
            extra["moa_truncations"] = [asdict(cut) for cut in self.cuts]
        if self.shuffle_seed is not None:
            extra.update(moa_reference_order=self.order, moa_shuffle_seed=self.shuffle_seed)
        extra["moa_aggregator_calls"] = self.calls
        update: dict[str, Any] = {"response_metadata": {**message.response_metadata, **extra}}
        if len(self.usage) > 1 or (self.usage and getattr(message, "usage_metadata", None) is None):
            update["usage_metadata"] = sum_usage(self.usage)
        return {"messages": [message.model_copy(update=update)]}


def aggregator_config(
    plan: MixturePlan,
    config: RunnableConfig,
    metadata: dict[str, Any],
    callbacks: Sequence[BaseCallbackHandler],
) -> RunnableConfig:
    """An aggregator call's traced config: tags and metadata, ``callbacks`` added, secrets
    masked."""
    labels = {"moa_layer": plan.layers, "moa_proposer": plan.aggregator.name,
              "moa_model": plan.aggregator.model_name, **metadata}  # fmt: skip
    traced = merge_configs(
        config,
        {"callbacks": list(callbacks), "tags": [AGGREGATOR_TAG, f"moa:layer:{plan.layers}"],
         "metadata": labels},
    )  # fmt: skip
    traced["callbacks"] = redacting_callbacks(traced.get("callbacks"), plan.secrets)
    return traced


class TokenWatcher(BaseCallbackHandler):
    """Notices whether a call already streamed tokens."""

    run_inline = True

    def __init__(self) -> None:
        self.streamed = False

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        if token:
            self.streamed = True
