"""Progress events (``stream_mode="custom"``) and trace labels, shared by the engine's calls."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langgraph.runtime import Runtime

from moa_graph.engine.plan import MixturePlan, ProposerSlot
from moa_graph.state import ProgressEvent

PROPOSER_TAG, AGGREGATOR_TAG = "moa:proposer", "moa:aggregator"
"""Tags of every proposer call and of every aggregator call (``moa:layer:<n>`` is added too)."""

NOSTREAM_TAGS = ("nostream", "langsmith:nostream")
"""Tags that keep a call's tokens off LangGraph's ``messages`` stream (LangGraph honours
``nostream``; LangSmith-era clients the other spelling): proposer calls carry them unless a run
asks for ``stream_proposers=True``, so chat UIs reading ``messages`` show only the answer."""


def emit(runtime: Runtime | None, **event: Any) -> None:
    """Send a progress event to ``stream_mode="custom"`` (nothing without a runtime)."""
    if runtime is not None:
        runtime.stream_writer(ProgressEvent(**event))  # type: ignore[typeddict-item]


def run_name(slot: ProposerSlot) -> str:
    """A proposer call's run name in traces: ``"proposer 2.1: qwen"``."""
    return f"proposer {slot.layer}.{slot.index + 1}: {slot.name}"


def identity(slot: ProposerSlot) -> dict[str, Any]:
    """Who a proposer event is about."""
    return {"layer": slot.layer, "index": slot.index, "proposer": slot.name,
            "model": slot.model_name}  # fmt: skip


def aggregator_identity(plan: MixturePlan) -> dict[str, Any]:
    """Who an aggregator event is about (its layer is the plan's last)."""
    return {"layer": plan.layers, "proposer": plan.aggregator.name,
            "model": plan.aggregator.model_name}  # fmt: skip


RECORD_KEYS = ("text", "usage", "attempts", "confidence", "rounds")
"""What ``proposal_finished`` and ``proposal_failed`` events carry of the proposal's record."""


def record_fields(proposal: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a proposal's record a finished (or failed) proposal event carries: its whole
    text, usage, attempts, and confidence and staircase rounds when known.

    Example:
        >>> record_fields({"text": "4", "usage": None, "attempts": 1, "status": "answered"})
        {'text': '4', 'usage': None, 'attempts': 1}
    """
    return {key: proposal[key] for key in RECORD_KEYS if key in proposal}


class ProposalTextEvents(BaseCallbackHandler):
    """Sends a proposer's text as it is written: a ``proposal_delta`` progress event for every
    token it streams (``text`` holds the token).

    It does not make a call stream: a proposer streams when the run streams ``messages`` (whose
    handler makes every chat model call under it stream; LangGraph Server's chat clients and the
    playground do) or when its model streams by itself (``streaming=True``). Otherwise its text
    arrives whole, in ``proposal_finished``.
    """

    run_inline = True  # in the call's own thread or task, so deltas keep their order

    def __init__(self, runtime: Runtime | None, who: dict[str, Any]) -> None:
        self.runtime, self.who = runtime, who

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        if isinstance(token, str) and token:
            emit(self.runtime, moa_event="proposal_delta", text=token, **self.who)
