"""One proposer call, as the graph's propose node makes it, and helpers the nodes share.

``ProposerCall`` gathers what a call needs (model, input, traced config, the layer's race) and
turns its outcome into the state update and progress events; the node only chooses sync or async.
The final answer's call(s) are in ``moa_graph.engine.final_answer``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.messages import (
    BaseMessage,
    BaseMessageChunk,
    message_chunk_to_message,
)
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import merge_configs
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langgraph.runtime import Runtime

from moa_graph.aggregation import call_seed, shuffled
from moa_graph.engine.calls import CallCancelled, cancel_requested
from moa_graph.engine.plan import ProposerSlot
from moa_graph.engine.references import Truncation
from moa_graph.engine.run_choices import context_values
from moa_graph.prompts import with_system_prompt
from moa_graph.redact import redacting_callbacks
from moa_graph.state import ProgressEvent, Proposal, ProposerTask
from moa_graph.tool_rendering import render_tool_turns

if TYPE_CHECKING:
    from moa_graph.engine.graph import _MoANodes

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
