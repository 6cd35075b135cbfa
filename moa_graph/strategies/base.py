"""What an aggregation strategy is, and what it may ask of the final answer it makes.

A strategy turns the last layer's answers (the *references*) into the final answer. It is a
generator: it yields the model calls it needs (built by the ``FinalAnswerSteps`` it is given),
receives each call's answer, and returns the final message. The engine runs those calls, sync or
async, with retries and tracing, so a strategy is only its decision logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, ClassVar, Protocol

from langchain_core.messages import BaseMessage

from moa_graph.aggregation import VoteCount

AggregationFlow = Generator[Any, BaseMessage, BaseMessage]
"""Yields model calls (``FinalAnswerSteps`` builds them), receives their answers, returns the
final message."""


class FinalAnswerSteps(Protocol):
    """The steps a strategy may take (implemented by ``moa_graph.engine.final_answer``)."""

    refs: list[str]
    """The references in the order shown (shuffled when ``shuffle_references`` is on)."""
    confidences: list[float | None]
    """Each reference's ``confidence`` (``None`` where its model gave no log-probabilities)."""
    confidence_temperature: float
    """The mixture's ``confidence_temperature`` setting."""
    extra: dict[str, Any]
    """Written to the final message's ``response_metadata`` (``moa_votes``, ``moa_rank``, ...)."""
    aggregation_window: int | None
    """The mixture's ``aggregation_window`` setting (Self-MoA-Seq)."""

    def synthesis(self, texts: list[str], note: str | None = None, *, step: str | None = None
                  ) -> Any:  # fmt: skip
        """A call of the aggregator on ``texts`` (with an optional ``note`` after them);
        ``step`` names a call whose answer is not the final one (it is not streamed)."""

    def ask_aggregator(self, messages: Sequence[BaseMessage], *, role: str, step: str) -> Any:
        """A call of the aggregator model on ``messages`` as they are, never streamed: ``role``
        names its run in traces (``"ranker"``), ``step`` its ``moa_step`` metadata."""

    def instruction(self) -> str:
        """The user's request as text, with earlier turns (for a ranker or judge prompt)."""

    def votes(self, texts: Sequence[str]) -> VoteCount:
        """The final answers ``texts`` state, read by the mixture's answer extractor."""

    def verbatim(self, position: int) -> BaseMessage:
        """Reference ``position`` (as shown) as the final answer, recorded as chosen."""

    def window_positions(self, groups: list[list[int]]) -> list[list[int]]:
        """Windows of shown positions as positions in configured order (for the record)."""


class Strategy:
    """An aggregation strategy (``from moa_graph import Strategy``).

    Give an instance as ``aggregation=`` (``ChatMixtureOfAgents``, ``create_moa_graph``,
    recipes, a run's context), declare one in the ``moa_graph.strategies`` entry points of your
    distribution to make its name valid everywhere, or, inside the package, add a module to
    ``moa_graph.strategies`` with a module-level ``STRATEGY`` instance.

    Example:
        >>> class Longest(Strategy):
        ...     name, summary, order = "longest", "the longest reference, verbatim", 90
        ...     picks_reference = True
        ...     def flow(self, steps):
        ...         longest = max(range(len(steps.refs)), key=lambda i: len(steps.refs[i]))
        ...         return steps.verbatim(longest)
        ...         yield  # a generator, even when it makes no call
    """

    name: ClassVar[str]
    """The value of the ``aggregation`` setting that selects this strategy."""
    summary: ClassVar[str]
    """One line for help texts."""
    order: ClassVar[int] = 100
    """Where the strategy is listed among the others (help texts, error messages)."""
    needs_extractor: ClassVar[bool] = False
    """Reads the references' final answers: the ``number`` extractor is used unless
    ``answer_extractor`` names another."""
    wants_confidence: ClassVar[bool] = False
    """Records the references' confidence where it costs nothing: proposers of the last layer
    whose models declare cheap log-probabilities are asked for them."""
    needs_confidence: ClassVar[bool] = False
    """Weighs the references by their models' confidence: the last layer's proposers are asked
    for log-probabilities (each must be able to give them)."""
    picks_reference: ClassVar[bool] = False
    """Returns a reference verbatim: cannot slide windows, and when a run binds tools or an
    output format (the answer must be written) ``synthesize_with_votes`` is used instead."""

    def flow(self, steps: FinalAnswerSteps) -> AggregationFlow:
        """Make the final answer (see ``AggregationFlow``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """In a schema (a graph's context on LangGraph Server, a served recipe), a strategy is
        its name: JSON carries a string; in Python an instance is accepted as it is."""
        from pydantic_core import core_schema

        return core_schema.json_or_python_schema(
            json_schema=core_schema.str_schema(),
            python_schema=core_schema.is_instance_schema(cls),
        )
