"""One proposer call, as the graph's propose node makes it.

``ProposerCall`` gathers what a call needs (model, input, traced config, the layer's race) and
turns its outcome into the state update and progress events; the node only chooses sync or async.
The final answer's call(s) are in ``moa_graph.engine.final_answer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs

from moa_graph.aggregation import call_seed, shuffled
from moa_graph.aggregator import InjectReferences
from moa_graph.confidence import answer_confidence
from moa_graph.engine.calls import CallCancelled
from moa_graph.engine.events import (
    PROPOSER_TAG,
    ProposalTextEvents,
    emit,
    identity,
    record_fields,
    run_name,
)
from moa_graph.engine.plan import ProposerSlot
from moa_graph.engine.race import LayerRace
from moa_graph.engine.runner import ModelCall
from moa_graph.engine.sample_batch import Draw, SampleBatch
from moa_graph.engine.scope import RunScope, proposer_model, sample_seed
from moa_graph.engine.token_streaming import (
    makes_calls_stream,
    with_handler,
    without_token_streaming,
)
from moa_graph.models import unbound
from moa_graph.prompts import with_system_prompt
from moa_graph.redact import redacting_callbacks
from moa_graph.state import Proposal, ProposerTask
from moa_graph.tool_rendering import render_tool_turns

logger = logging.getLogger("moa_graph")


class ProposerCall:
    """One proposer's call in one run; a context manager that holds its layer's race and its
    sample batch while the call runs (``with ProposerCall(...) as call:``)."""

    def __init__(self, scope: RunScope, task: ProposerTask, config: RunnableConfig) -> None:
        self.slot = slot = scope.slot(task["layer"], task["index"])
        self.scope, self.runtime = scope, scope.runtime
        self.race: LayerRace | None = None
        self.batch: SampleBatch | None = None
        self.runnable = scope.runnables[(slot.layer, slot.index)]
        conversation = render_tool_turns(task["messages"])  # proposers never see tool turns
        references, self.shuffle = task["references"], {}
        options = scope.options
        if options.shuffle_references and len(references) > 1:
            seed = call_seed(options.seed, slot.layer, slot.index)
            references, order = shuffled(references, seed)
            self.shuffle = {"reference_order": order, "shuffle_seed": seed}
        self.input: Any = (
            with_system_prompt(conversation, slot.system_prompt)
            if slot.layer == 1
            else {"messages": conversation, "references": references}
        )
        shuffle = {f"moa_{key}": value for key, value in self.shuffle.items()}
        self.config = proposer_config(scope, slot, config, shuffle)
        self.run_id, self.members = task["run_id"], task.get("batch") or []
        self.call: ModelCall | None = None
        self.started = time.perf_counter()

    def __enter__(self) -> ProposerCall:
        """Hold the layer's race and the sample batch, and report the call started (unless its
        layer already stopped waiting)."""
        slot = self.slot
        try:
            self.race = self.scope.race(self.run_id, slot)
            if self.members:
                self.batch = self.scope.sample_batch(self.run_id, slot.layer, self.members)
            if self.race is None or not self.race.stopped:
                emit(self.runtime, moa_event="proposal_started", **identity(slot))
        except BaseException as error:  # let go of what was taken: ``__exit__`` will not run
            self.__exit__(type(error))
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        """The call ended, with an outcome or abandoned (an exception: the run was cancelled,
        interrupted or failed); either way it lets go of what it shares."""
        members = self.batch.members if self.batch is not None else None
        self.scope.call_ended(self.run_id, self.slot, race=self.race is not None, batch=members,
                              abandoned=exc_type is not None)  # fmt: skip

    def model_call(self) -> ModelCall:
        """The call to make (once per proposer call; the runner counts its attempts)."""
        draw = self._draw() if self.batch is not None else None
        self.call = ModelCall(self.runnable, self.input, self.config, self.slot.policy,
                              race=self.race, on_retry=self.on_retry, draw=draw)  # fmt: skip
        return self.call

    def _draw(self) -> Draw:
        """This call's share of the request that draws its batch's samples together: the
        batch's prompt, the seed of its first sample and its traced config."""
        assert self.batch is not None
        slot, members = self.slot, self.batch.members
        messages = (
            self.input if slot.layer == 1
            else InjectReferences(self.scope.plan.prompt, slot.system_prompt).invoke(self.input)
        )  # fmt: skip
        first_slot = self.scope.slot(slot.layer, members[0])
        first, last = members[0] + 1, members[-1] + 1
        config = merge_configs(self.config, {
            "run_name": f"proposer {slot.layer}.{first}-{last}: {slot.spec_name} x{len(members)}",
            "metadata": {"moa_batch": list(members)},
        })  # fmt: skip
        model = proposer_model(self.scope.plan, slot)
        seed = sample_seed(self.scope.plan, first_slot)
        return Draw(self.batch, slot.index, model, messages, seed, config)

    def on_retry(self, attempt: int, error: BaseException, delay: float) -> None:
        emit(self.runtime, moa_event="proposal_retrying", attempt=attempt, delay_s=delay,
             error=self.scope.describe(error), **identity(self.slot))  # fmt: skip

    def outcome(
        self, *, message: BaseMessage | None = None, error: BaseException | None = None
    ) -> dict[str, list[Proposal]]:
        """The state update for this call: answered, failed or cancelled (no message, no error
        or ``CallCancelled``)."""
        latency = round(time.perf_counter() - self.started, 6)
        attempts = self.call.attempts if self.call is not None else 0
        extra: dict[str, Any] = dict(self.shuffle)
        text: str = ""
        if message is not None:
            status, text, failure = "answered", message.text, None
            if (confidence := answer_confidence(message)) is not None:
                extra["confidence"] = confidence
        elif error is None or isinstance(error, CallCancelled):
            race_reason = self.race.reason if self.race is not None else None
            reason = error.reason if error is not None else race_reason
            status, failure = "cancelled", f"cancelled: {reason or 'not started'}"
        else:
            status, failure = "failed", self.scope.describe(error)
        usage = getattr(message, "usage_metadata", None)
        proposal = proposal_record(self.slot, status, text, failure, usage, latency, attempts,
                                   **extra)  # fmt: skip
        announce(self.scope, self.slot, self.race, proposal)
        return {"proposals": [proposal]}


def proposal_record(
    slot: ProposerSlot, status: str, text: str, error: str | None,
    usage: Mapping[str, Any] | None, latency: float, attempts: int, **extra: Any,
) -> Proposal:  # fmt: skip
    """A proposer call's outcome as the run records it."""
    proposal = Proposal(
        layer=slot.layer, index=slot.index, proposer=slot.name, model=slot.model_name,
        status=status,  # type: ignore[typeddict-item]
        text=text, error=error, usage=dict(usage) if usage else None, latency_s=latency,
        attempts=attempts,
    )  # fmt: skip
    proposal.update(extra)  # type: ignore[typeddict-item]
    return proposal


def announce(
    scope: RunScope, slot: ProposerSlot, race: LayerRace | None, proposal: Proposal
) -> None:
    """Report a proposer's outcome (``proposal_finished`` or ``proposal_failed``, a failure
    logged too), then tell its layer's race."""
    status, error = proposal["status"], proposal["error"]
    if status == "failed":
        logger.warning("proposer %s (%s) of layer %d failed: %s", slot.name, slot.model_name,
                       slot.layer, error)  # fmt: skip
    event = "proposal_finished" if status == "answered" else "proposal_failed"
    details = {"error": error} if error else {}
    emit(scope.runtime, moa_event=event, **identity(slot), latency_s=proposal["latency_s"],
         **details, **record_fields(proposal))  # fmt: skip
    if race is not None:
        {"answered": race.answered, "failed": race.failed}.get(status, race.cancelled)()


def proposer_config(
    scope: RunScope, slot: ProposerSlot, config: RunnableConfig, metadata: dict[str, Any],
    *, streamed: bool = False,
) -> RunnableConfig:  # fmt: skip
    """A proposer call's traced config: its run name, tags and metadata, its callbacks without
    token streaming when nobody reads the proposers' tokens (else with ``proposal_delta``
    events for a call that streams: ``streamed``, a staircase round read as a stream), and
    secrets masked."""
    labels = {"moa_layer": slot.layer, "moa_index": slot.index, "moa_proposer": slot.name,
              "moa_model": slot.model_name, **metadata}  # fmt: skip
    tags = [PROPOSER_TAG, f"moa:layer:{slot.layer}", *scope.not_answer_tags]
    traced = merge_configs(config, {"run_name": run_name(slot), "tags": tags, "metadata": labels})
    callbacks = traced.get("callbacks")
    if scope.proposers_stream:
        # deltas come from streamed tokens only: a call that does not stream needs no handler
        # (each handler is called at every start and end of every call: measurable at scale)
        streams = streamed or getattr(unbound(slot.model)[0], "streaming", None) is True
        if streams or makes_calls_stream(callbacks):
            callbacks = with_handler(callbacks, ProposalTextEvents(scope.runtime, identity(slot)))
    else:
        callbacks = without_token_streaming(callbacks)
    traced["callbacks"] = redacting_callbacks(callbacks, scope.plan.secrets)
    return traced
