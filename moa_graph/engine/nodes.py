"""The graph's nodes and routes: what each step of a run does (the wiring is in ``graph``).

Every node gets the run's ``RunScope`` from the mixture (``Mixture.scope``), so a per-run choice
is read once per step and checked before any model call.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.errors import GraphBubbleUp
from langgraph.graph import END
from langgraph.runtime import Runtime
from langgraph.types import Send

from moa_graph.engine import staircase_run
from moa_graph.engine.final_answer import FinalAnswer
from moa_graph.engine.proposer_call import ProposerCall
from moa_graph.engine.runner import Steps, drive_async, drive_sync
from moa_graph.engine.sample_batch import sample_batches
from moa_graph.engine.scope import Mixture, RunScope, latest_layer
from moa_graph.state import CLEAR_PROPOSALS, MoAState, Proposal, ProposerTask
from moa_graph.validation import validate_conversation

PREPARE, PROPOSE, COLLECT, AGGREGATE = "prepare", "propose", "collect_layer", "aggregate"
"""Node names (``AGGREGATE`` streams the final answer)."""

# LangGraph's configurable flag, set during the first step of a resumed thread
# (``langgraph._internal._constants.CONFIG_KEY_RESUMING``): no public API tells a node that its
# run resumes, and a resumed layer that had failed must call its failed proposers again.
_RESUMING = "__pregel_resuming"


class MixtureNodes:
    """The node and routing functions of one mixture."""

    def __init__(self, mixture: Mixture) -> None:
        self.mixture = mixture

    def prepare(self, state: MoAState, runtime: Runtime) -> dict[str, Any]:
        scope = self.mixture.scope(runtime)  # a bad per-run choice fails here, before any call
        scope.check_call_choices()
        validate_conversation(
            state.get("messages", []), max_input_chars=scope.options.max_input_chars
        )
        return {"proposals": CLEAR_PROPOSALS, "run_id": uuid.uuid4().hex}

    def send_first_layer(self, state: MoAState, runtime: Runtime) -> list[Send] | str:
        scope = self.mixture.scope(runtime)
        if scope.options.staircase:  # every proposer runs inside the aggregate step
            return AGGREGATE
        return _sends(scope, 1, state, [])

    def propose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        scope = self.mixture.scope(runtime)
        return drive_sync(_proposal(scope, task, config), scope.limiter)

    async def apropose(self, task: ProposerTask, config: RunnableConfig, runtime: Runtime) -> dict:
        scope = self.mixture.scope(runtime)
        return await drive_async(_proposal(scope, task, config), scope.limiter)

    def after_propose(self, state: MoAState, runtime: Runtime) -> str:
        """A proposer's layer is joined by ``collect_layer``; the last layer by the aggregator."""
        return AGGREGATE if _joins_last_layer(self.mixture.scope(runtime), state) else COLLECT

    def collect(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> None:
        scope = self.mixture.scope(runtime)
        if _finish_layer(scope, state, config) == _DONE:
            layer = latest_layer(state["proposals"])
            scope.references(state["proposals"], layer, report=True)  # reports any cut once

    def route_after_layer(
        self, state: MoAState, config: RunnableConfig, runtime: Runtime
    ) -> list[Send] | str:
        scope = self.mixture.scope(runtime)
        layer, proposals = _latest(state)
        if _retry_on_resume(scope, proposals, config):
            return _retry_sends(scope, state, layer)
        if scope.layer_failed(proposals) or scope.consensus(state["proposals"]):
            return AGGREGATE
        return _sends(scope, layer + 1, state, scope.references(state["proposals"], layer))

    def aggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        scope = self.mixture.scope(runtime)
        if scope.options.staircase:
            return staircase_run.run_sync(scope, state, config)
        return drive_sync(self._final_answer(scope, state, config), scope.limiter)

    async def aaggregate(self, state: MoAState, config: RunnableConfig, runtime: Runtime) -> dict:
        scope = self.mixture.scope(runtime)
        if scope.options.staircase:
            return await staircase_run.run_async(scope, state, config)
        return await drive_async(self._final_answer(scope, state, config), scope.limiter)

    @staticmethod
    def _final_answer(scope: RunScope, state: MoAState, config: RunnableConfig) -> Steps[dict]:
        """The run's final answer, once the last layer is joined (nothing yet when a resumed
        run must first call that layer's failed proposers again: ``after_aggregate`` does)."""
        if _joins_last_layer(scope, state) and _finish_layer(scope, state, config) == _RETRY:
            return {}
        answer = FinalAnswer(scope, state, config)
        return (yield from answer.steps())

    def after_aggregate(
        self, state: MoAState, config: RunnableConfig, runtime: Runtime
    ) -> list[Send] | str:
        """The end, unless a resumed run calls its last layer's failed proposers again."""
        scope = self.mixture.scope(runtime)
        if not scope.options.staircase and _joins_last_layer(scope, state):
            layer, proposals = _latest(state)
            if _retry_on_resume(scope, proposals, config):
                return _retry_sends(scope, state, layer)
        return END


def _proposal(scope: RunScope, task: ProposerTask, config: RunnableConfig) -> Steps[dict]:
    """One proposer's call and its outcome (the state update)."""
    with ProposerCall(scope, task, config) as call:
        if call.race is not None and call.race.stopped:
            return call.outcome()
        try:
            message = yield call.model_call()
        except GraphBubbleUp:
            raise
        except Exception as error:
            return call.outcome(error=error)
        return call.outcome(message=message)


_DONE, _FAILED, _RETRY = "done", "failed", "retry"


def _finish_layer(scope: RunScope, state: MoAState, config: RunnableConfig) -> str:
    """Join the latest layer: report it, then check its quorum. ``_RETRY`` when a resumed run
    must call its failed proposers again, ``_FAILED`` below quorum with the aggregator's
    fallback on (without it, ``ProposalsFailedError``), else ``_DONE``."""
    layer, proposals = _latest(state)
    scope.layer_joined(state["run_id"], layer)
    scope.layer_done(layer, proposals)
    if _retry_on_resume(scope, proposals, config):
        return _RETRY
    return _DONE if scope.quorum_met(layer, proposals) else _FAILED


def _latest(state: MoAState) -> tuple[int, list[Proposal]]:
    """The latest layer that has proposals, and its proposals."""
    layer = latest_layer(state["proposals"])
    return layer, [p for p in state["proposals"] if p["layer"] == layer]


def _joins_last_layer(scope: RunScope, state: MoAState) -> bool:
    """Whether the aggregate step follows the last proposer layer directly (and so joins it)."""
    return latest_layer(state["proposals"]) == len(scope.plan.proposer_layers)


def _retry_sends(scope: RunScope, state: MoAState, layer: int) -> list[Send]:
    """The failed proposers of ``layer``, sent again with the references they had."""
    failed = {
        p["index"] for p in state["proposals"] if p["layer"] == layer and p["status"] == "failed"
    }
    refs = scope.references(state["proposals"], layer - 1) if layer > 1 else []
    return _sends(scope, layer, state, refs, only=failed)


def _sends(
    scope: RunScope, layer: int, state: MoAState, refs: list[str],
    only: set[int] | None = None,
) -> list[Send]:  # fmt: skip
    """A ``Send`` per proposer call of ``layer`` (``only`` these indices, when given)."""
    slots = [slot for slot in scope.layer(layer) if only is None or slot.index in only]
    # shuffled references give each sample its own prompt: those are drawn one by one
    shuffled = scope.options.shuffle_references and len(refs) > 1
    batches = {slot.index: [slot.index] for slot in slots} if shuffled else sample_batches(slots)
    sends = []
    for slot in slots:
        task = ProposerTask(run_id=state["run_id"], layer=layer, index=slot.index,
                            messages=state["messages"], references=refs)  # fmt: skip
        if len(batches[slot.index]) > 1:
            task["batch"] = batches[slot.index]
        sends.append(Send(PROPOSE, task))
    return sends


def _retry_on_resume(
    scope: RunScope, proposals: Sequence[Proposal], config: RunnableConfig
) -> bool:
    """Whether this step resumes a thread whose run failed at this layer (``proposals``, the
    latest layer's): then the failed proposers are called again (LangGraph saved them as
    finished tasks, so resuming would otherwise only repeat the error)."""
    if not config.get("configurable", {}).get(_RESUMING):
        return False
    return scope.layer_failed(proposals) and any(p["status"] == "failed" for p in proposals)
