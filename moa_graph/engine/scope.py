"""What the runs of one mixture share (``Mixture``), and one run's view of it (``RunScope``).

A run's context may narrow the configured mixture (fewer layers, a subset of proposers, another
strategy...). ``Mixture.scope(runtime)`` gives each node call the run's ``RunScope``: the plan
narrowed by that context and its proposer runnables (built once per distinct choice), the races
of the run's layers and the mixture's call limiter, plus what the nodes ask of them (references,
quorum, consensus).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import Runnable
from langgraph.errors import GraphBubbleUp
from langgraph.runtime import Runtime

from moa_graph.aggregation import VoteCount, count_votes
from moa_graph.aggregator import bind_aggregator
from moa_graph.backend import traits_of
from moa_graph.engine.events import NOSTREAM_TAGS, emit, run_name
from moa_graph.engine.limits import CallLimiter
from moa_graph.engine.plan import MixturePlan, ProposerSlot
from moa_graph.engine.race import LayerRace
from moa_graph.engine.references import Truncation, answered, fit_to_budget
from moa_graph.engine.run_choices import (
    answer_must_be_written,
    check_aggregator_kwargs,
    context_values,
    run_key,
    run_plan,
)
from moa_graph.engine.sample_batch import SampleBatch
from moa_graph.engine.shared_by_calls import SharedByCalls
from moa_graph.errors import AggregatorError, ProposalsFailedError
from moa_graph.redact import redact
from moa_graph.state import Proposal

Runnables = dict[tuple[int, int], Runnable[Any, BaseMessage]]
"""Each proposer call's runnable, by ``(layer, index)``."""

_MAX_VARIANTS = 64
"""Per-run plans kept per mixture (each distinct context choice builds one)."""


class Mixture:
    """What every run of one mixture shares: its plan and the plans its runs chose, the races of
    the layers being run, and the cap on calls in flight.

    Example:
        >>> from langchain_core.language_models import GenericFakeChatModel
        >>> from moa_graph.engine.plan import build_plan
        >>> fake = GenericFakeChatModel(messages=iter([]))
        >>> mixture = Mixture(build_plan([fake, fake], aggregator=fake, layers=3))
        >>> sorted(mixture.scope(None).runnables)
        [(1, 0), (1, 1), (2, 0), (2, 1)]
    """

    def __init__(self, plan: MixturePlan) -> None:
        self.plan = plan
        self.races: SharedByCalls[LayerRace] = SharedByCalls()
        self.batches: SharedByCalls[SampleBatch] = SharedByCalls()
        self.limiter = CallLimiter(plan.options.max_concurrent_calls)
        self._variants: dict[tuple[Any, ...], tuple[MixturePlan, Runnables]] = {}
        self._configured = (plan, _runnables(plan))

    def plan_for(self, context: Any) -> MixturePlan:
        """The plan of a run with ``context`` (its per-run choices), worked out once per
        distinct choice; a bad choice raises ``ValueError`` naming it."""
        return self._variant(context)[0]

    def scope(self, runtime: Runtime | None) -> RunScope:
        """The run's scope; a bad per-run choice raises ``ValueError`` naming it."""
        context = runtime.context if runtime is not None else None
        plan, runnables = self._variant(context)
        return RunScope(self, plan, runnables, context_values(context), runtime)

    def _variant(self, context: Any) -> tuple[MixturePlan, Runnables]:
        key = run_key(context)
        if key is None:
            return self._configured
        variant = self._variants.get(key)
        if variant is None:
            narrowed = run_plan(self.plan, context)
            variant = (narrowed, _runnables(narrowed))
            if len(self._variants) >= _MAX_VARIANTS:
                self._variants.clear()
            self._variants[key] = variant
        return variant


class RunScope:
    """One run's view of its mixture (see the module docstring)."""

    def __init__(
        self,
        mixture: Mixture,
        plan: MixturePlan,
        runnables: Runnables,
        choices: Mapping[str, Any],
        runtime: Runtime | None,
    ) -> None:
        self.plan, self.options, self.runnables = plan, plan.options, runnables
        self.limiter = mixture.limiter
        self.choices, self.runtime = choices, runtime
        self._races = mixture.races
        self._batches = mixture.batches

    # -- what the run asked for --------------------------------------------------------------

    def aggregator_model(self) -> Runnable[Any, BaseMessage]:
        """The aggregator's model with the run's call arguments (checked again here: a resumed
        run skips ``prepare``) and the mixture's seed bound."""
        model, kwargs = self.plan.aggregator.model, self.choices.get("aggregator_kwargs") or {}
        check_aggregator_kwargs(kwargs)
        model = model.bind(**kwargs) if kwargs else model
        return model if self.options.seed is None else model.bind(seed=self.options.seed)

    def check_call_choices(self) -> None:
        """Refuse the run's call arguments now, before any model is called (``ValueError``)."""
        check_aggregator_kwargs(self.choices.get("aggregator_kwargs") or {})
        if self.options.staircase and self.answer_must_be_written:
            raise ValueError(
                "staircase: tools or an output format bound to the aggregator need one whole "
                "answer of it; turn staircase off for this run (staircase=None)"
            )

    @property
    def answer_must_be_written(self) -> bool:
        """Tools or an output format are bound: no reference can be the answer verbatim."""
        return answer_must_be_written(self.choices)

    @property
    def proposers_stream(self) -> bool:
        """Whether proposer calls stream their tokens (``stream_proposers``, default on): as
        ``proposal_delta`` progress events, and on the ``messages`` stream only when a run asks
        for ``stream_proposers=True`` (``not_answer_tags``)."""
        return self.choices.get("stream_proposers") is not False

    @property
    def not_answer_tags(self) -> tuple[str, ...]:
        """Tags of a call whose tokens are not the answer's (a proposer, a ranker, a window's
        synthesis): ``NOSTREAM_TAGS``, unless the run asks for ``stream_proposers=True`` (by
        default chat UIs see only the answer on the ``messages`` stream)."""
        return () if self.choices.get("stream_proposers") is True else NOSTREAM_TAGS

    def sample_batch(self, run_id: str, layer: int, members: Sequence[int]) -> SampleBatch:
        """The request that draws the samples ``members`` of ``layer`` together, held by the
        calling proposer until it ends (``call_ended``)."""
        members = tuple(members)
        return self._batches.hold(
            (run_id, layer, members), callers=len(members), make=lambda: SampleBatch(members)
        )

    # -- layers ------------------------------------------------------------------------------

    def layer(self, number: int) -> tuple[ProposerSlot, ...]:
        """The proposer calls of layer ``number`` (from 1)."""
        return self.plan.proposer_layers[number - 1]

    def slot(self, layer: int, index: int) -> ProposerSlot:
        """The proposer call ``index`` of layer ``layer``."""
        return next(slot for slot in self.layer(layer) if slot.index == index)

    def new_race(self, layer: int) -> LayerRace | None:
        """A race for ``layer`` when the run may stop waiting early (its deadline starts now)."""
        rules = self.plan.race_rules
        return LayerRace(rules, len(self.layer(layer))) if rules.can_stop_early else None

    def race(self, run_id: str, slot: ProposerSlot) -> LayerRace | None:
        """The race of the slot's layer in this run, held by the calling proposer until it
        ends (``call_ended``); ``None`` when the run never stops waiting early."""
        rules, width = self.plan.race_rules, len(self.layer(slot.layer))
        if not rules.can_stop_early:
            return None
        return self._races.hold(
            (run_id, slot.layer), callers=width, make=lambda: LayerRace(rules, width)
        )

    def call_ended(
        self, run_id: str, slot: ProposerSlot, *, race: bool, batch: Sequence[int] | None,
        abandoned: bool = False,
    ) -> None:  # fmt: skip
        """A proposer call that held its layer's ``race`` and/or a ``batch`` has ended, with an
        outcome or ``abandoned`` (then what it shares is dropped: the run stops here)."""
        if race:
            self._races.release((run_id, slot.layer), abandoned=abandoned)
        if batch:
            self._batches.release((run_id, slot.layer, tuple(batch)), abandoned=abandoned)

    def layer_joined(self, run_id: str, layer: int) -> None:
        """Every call of ``layer`` has ended: forget what calls that never came still held."""
        self._races.forget(run_id, layer)
        self._batches.forget(run_id, layer)

    def layer_done(self, layer: int, proposals: Sequence[Proposal]) -> None:
        """Report a layer whose every proposer has ended (``layer_done``, with its counts)."""
        counts = {status: sum(p["status"] == status for p in proposals)
                  for status in ("answered", "failed", "cancelled")}  # fmt: skip
        emit(self.runtime, moa_event="layer_done", layer=layer, succeeded=counts["answered"],
             failed=counts["failed"], cancelled=counts["cancelled"])  # fmt: skip

    def quorum_met(self, layer: int, proposals: Sequence[Proposal]) -> bool:
        """Whether a joined layer stands; ``False`` below quorum with the aggregator's fallback
        on, ``ProposalsFailedError`` without it."""
        if not self.layer_failed(proposals):
            return True
        if not self.options.fallback_to_aggregator:
            raise ProposalsFailedError(layer, proposals, self.options.min_proposals)
        return False

    def layer_failed(self, proposals: Sequence[Proposal]) -> bool:
        """Whether a layer's answers fall below ``min_proposals`` (or any failed, fail-fast)."""
        answers = sum(p["status"] == "answered" for p in proposals)
        failed = any(p["status"] == "failed" for p in proposals)
        return answers < self.options.min_proposals or (
            self.options.fail_mode == "fail_fast" and failed
        )

    def consensus(self, proposals: Sequence[Proposal]) -> tuple[int, VoteCount] | None:
        """With ``early_exit``: the latest layer and its vote when every proposer of it
        answered and all state the same final answer (``None`` otherwise, and whenever tools or
        an output format are bound to the aggregator)."""
        extractor = self.plan.extractor
        if not self.options.early_exit or extractor is None or self.answer_must_be_written:
            return None
        layer = latest_layer(proposals)
        latest = [p for p in proposals if p["layer"] == layer]
        if any(p["status"] != "answered" for p in latest):
            return None
        count = count_votes([p["text"] for p in latest], extractor)
        return (layer, count) if count.unanimous else None

    # -- references --------------------------------------------------------------------------

    def references(
        self, proposals: Sequence[Proposal], layer: int, *, report: bool = False
    ) -> list[str]:
        """The answers of ``layer`` as the next layer's references (cut to the budget)."""
        return self.fit(answered(proposals, layer), layer, report=report)[0]

    def fit(
        self, chosen: list[Proposal], layer: int, *, report: bool = False
    ) -> tuple[list[str], list[Truncation]]:
        """Fit references to ``max_reference_tokens``; ``report`` emits any cut as an event."""
        texts, cuts = fit_to_budget(chosen, self.options.max_reference_tokens,
                                    self.options.token_counter)  # fmt: skip
        if cuts and report:
            emit(self.runtime, moa_event="references_truncated", layer=layer,
                 truncations=[asdict(cut) for cut in cuts])  # fmt: skip
        return texts, cuts

    def final_references(
        self, proposals: Sequence[Proposal]
    ) -> tuple[list[str], list[Truncation], str | None, list[Proposal]]:
        """References for the aggregator, why it is a fallback (``None`` when it is not), and
        the proposals they are the answers of."""
        reached = latest_layer(proposals)
        for layer in range(reached, 0, -1):
            chosen = answered(proposals, layer)
            if not chosen:
                continue
            texts, cuts = self.fit(chosen, layer, report=True)
            minimum = self.options.min_proposals
            complete = layer == len(self.plan.proposer_layers) and len(chosen) >= minimum
            reason = None if complete else (
                f"the aggregator used the {len(chosen)} answer(s) of layer {layer} after "
                f"layer {reached} fell below min_proposals={minimum}"
            )  # fmt: skip
            return texts, cuts, reason, chosen
        return [], [], "every proposer failed: the aggregator answered alone", []

    @contextmanager
    def aggregator_failures(self) -> Iterator[None]:
        """A failed aggregator call becomes an ``AggregatorError`` naming the model, its cause
        described with secrets masked (graph interrupts and other control flow pass through)."""
        try:
            yield
        except GraphBubbleUp:
            raise
        except Exception as error:
            aggregator = self.plan.aggregator
            raise AggregatorError(aggregator.name, aggregator.model_name,
                                  self.describe(error)) from None  # fmt: skip

    def describe(self, error: BaseException) -> str:
        """The error as recorded: type and message, secrets masked."""
        return redact(f"{type(error).__name__}: {error}", self.plan.secrets)


def latest_layer(proposals: Sequence[Proposal]) -> int:
    """The highest layer that has proposals."""
    return max(p["layer"] for p in proposals)


def _runnables(plan: MixturePlan) -> Runnables:
    return {
        (slot.layer, slot.index): _runnable_for(plan, slot)
        for layer in plan.proposer_layers
        for slot in layer
    }


def _runnable_for(plan: MixturePlan, slot: ProposerSlot) -> Runnable[Any, BaseMessage]:
    """A proposer call's runnable: its seeded model, behind the prompt that injects the
    references from layer 2 on."""
    model = seeded(plan, slot)
    if slot.layer == 1:
        return model
    return bind_aggregator(
        model, prompt=plan.prompt, system_prompt=slot.system_prompt, name=run_name(slot)
    )


def proposer_model(plan: MixturePlan, slot: ProposerSlot) -> Runnable[Any, BaseMessage]:
    """The slot's model, asked for log-probabilities when the strategy weighs the last layer's
    answers by confidence, or records it and the model gives them at no cost."""
    strategy = plan.strategy
    if slot.layer == len(plan.proposer_layers) and (
        strategy.needs_confidence
        or (strategy.wants_confidence and traits_of(slot.model).cheap_logprobs)
    ):
        return slot.model.bind(logprobs=True)
    return slot.model


def sample_seed(plan: MixturePlan, slot: ProposerSlot) -> int | None:
    """The seed sample k of a model draws with: the mixture's seed plus k (``None`` without)."""
    return None if plan.options.seed is None else plan.options.seed + slot.sample


def seeded(plan: MixturePlan, slot: ProposerSlot) -> Runnable[Any, BaseMessage]:
    """The slot's model, drawing with its ``sample_seed`` when the mixture has a seed."""
    model = proposer_model(plan, slot)
    seed = sample_seed(plan, slot)
    return model if seed is None else model.bind(seed=seed)
