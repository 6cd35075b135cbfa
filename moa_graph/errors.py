"""Errors raised by a mixture run (configuration errors are plain ``ValueError``/``TypeError``)."""

from __future__ import annotations

from collections.abc import Sequence

from moa_graph.state import Proposal


class MoAError(RuntimeError):
    """Base class of the errors a Mixture-of-Agents run raises."""


class ProposalsFailedError(MoAError):
    """Too few proposers of a layer answered; the message lists every failure."""

    def __init__(self, layer: int, proposals: Sequence[Proposal], min_proposals: int) -> None:
        self.layer = layer
        self.failures = [p for p in proposals if p["status"] != "answered"]
        answered = len(proposals) - len(self.failures)
        lines = [
            f"layer {layer}: {answered} of {len(proposals)} proposers answered, "
            f"min_proposals={min_proposals}"
        ]
        lines += [f"  - {p['proposer']} ({p['model']}): {p['error']}" for p in self.failures]
        super().__init__("\n".join(lines))


class AggregatorError(MoAError):
    """The aggregator's call failed; the message names the model and the cause."""

    def __init__(self, name: str, model: str, cause: str) -> None:
        self.name = name
        self.model = model
        super().__init__(f"aggregator {name} ({model}) failed: {cause}")


class ThreadInUseError(ValueError):
    """A call kept on a thread (``moa_thread``) that holds another request's run."""

    def __init__(self, thread: str) -> None:
        self.thread = thread
        super().__init__(
            f"moa_thread: thread {thread!r} holds the run of another request (conversation, "
            "stop or choices); one thread keeps one run: give a new thread id"
        )
