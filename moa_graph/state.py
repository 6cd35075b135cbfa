"""Graph state: the conversation, and every proposer's recorded output keyed by (layer, index)."""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph import MessagesState
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

CLEAR_PROPOSALS: Final = "__clear_proposals__"
"""Write this to ``proposals`` to empty it (done once at the start of every run)."""


class Proposal(TypedDict):
    """One proposer's recorded output for one run.

    ``layer`` counts from 1 and ``index`` is the proposer's configured position in its layer
    (from 0), so ``(layer, index)`` identifies the call whatever order calls finish in.
    ``status`` is ``"answered"``, ``"failed"`` or ``"cancelled"`` (cut off by ``first_k``, the
    layer deadline or ``fail_mode="fail_fast"``); a proposal that did not answer has
    ``text == ""`` and says why in ``error``. ``attempts`` counts calls made (retries included).
    With ``shuffle_references``, a proposer of layer 2 or later records the order it was shown
    the references in (``reference_order``: positions in configured order) and the seed drawn.
    """

    layer: int
    index: int
    proposer: str
    model: str
    status: Literal["answered", "failed", "cancelled"]
    text: str
    error: str | None
    usage: dict[str, Any] | None
    latency_s: float
    attempts: int
    reference_order: NotRequired[list[int]]
    shuffle_seed: NotRequired[int]
    rounds: NotRequired[int]
    """With ``staircase``: the model calls (rounds) the answer took."""
    confidence: NotRequired[float]
    """Where the model returned log-probabilities: ``exp`` of the mean log-probability of the
    answer's tokens (``moa_graph.confidence``)."""


def merge_proposals(
    current: list[Proposal] | None, update: list[Proposal] | Proposal | str
) -> list[Proposal]:
    """Reducer for ``proposals``: merge by ``(layer, index)`` and keep them sorted by that key.

    The order in which proposers finish never changes the result.

    Example:
        >>> a = {"layer": 1, "index": 1, "text": "b"}
        >>> b = {"layer": 1, "index": 0, "text": "a"}
        >>> [p["text"] for p in merge_proposals([a], [b])]
        ['a', 'b']
    """
    if update == CLEAR_PROPOSALS:
        return []
    updates: list[Proposal] = [update] if isinstance(update, dict) else list(update)  # type: ignore[arg-type]
    merged = {(p["layer"], p["index"]): p for p in current or []}
    for proposal in updates:
        merged[(proposal["layer"], proposal["index"])] = proposal
    return [merged[key] for key in sorted(merged)]


class MoAInput(TypedDict):
    """What callers send: the conversation."""

    messages: Annotated[list[AnyMessage], add_messages]


class MoAOutput(TypedDict):
    """What a run returns: the conversation with the final answer appended, and all proposals."""

    messages: Annotated[list[AnyMessage], add_messages]
    proposals: Annotated[list[Proposal], merge_proposals]


class MoAState(MessagesState):
    """Full graph state: ``messages`` (from ``MessagesState``), ``proposals`` and the run's id."""

    proposals: Annotated[list[Proposal], merge_proposals]
    run_id: str


class ProposerTask(TypedDict):
    """The payload one ``Send`` carries to the ``propose`` node."""

    run_id: str
    layer: int
    index: int
    messages: list[AnyMessage]
    references: list[str]
    batch: NotRequired[list[int]]
    """The indices of the samples one request draws together with this one (in sample order;
    absent when it is drawn alone)."""


class ProgressEvent(TypedDict):
    """A custom stream event (``stream_mode="custom"``) reporting progress of a run."""

    moa_event: Literal[
        "proposal_started",
        "proposal_delta",
        "proposal_finished",
        "proposal_failed",
        "layer_done",
        "aggregation_started",
        "aggregation_finished",
        "proposal_retrying",
        "references_truncated",
        "early_exit",
        "round_started",
        "round_finished",
    ]
    layer: int
    index: NotRequired[int]
    proposer: NotRequired[str]
    model: NotRequired[str]
    latency_s: NotRequired[float]
    error: NotRequired[str]
    attempt: NotRequired[int]
    delay_s: NotRequired[float]
    succeeded: NotRequired[int]
    failed: NotRequired[int]
    cancelled: NotRequired[int]
    truncations: NotRequired[list[dict[str, int]]]
    calls_saved: NotRequired[int]
    round: NotRequired[int]
    final: NotRequired[bool]
    text: NotRequired[str]
    usage: NotRequired[dict[str, Any] | None]
    confidence: NotRequired[float]
    rounds: NotRequired[int]
