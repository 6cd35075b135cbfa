"""Progress events (``stream_mode="custom"``) and trace labels, shared by the engine's calls."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from moa_graph.engine.plan import ProposerSlot
from moa_graph.engine.references import Truncation
from moa_graph.state import ProgressEvent

PROPOSER_TAG, AGGREGATOR_TAG = "moa:proposer", "moa:aggregator"
"""Tags of every proposer call and of every aggregator call (``moa:layer:<n>`` is added too)."""


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


def truncation_record(cut: Truncation) -> dict[str, int]:
    """A reference cut to the token budget, as events and metadata record it."""
    return {"layer": cut.layer, "index": cut.index, "tokens": cut.tokens,
            "kept_tokens": cut.kept_tokens}  # fmt: skip
