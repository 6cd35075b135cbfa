"""The pieces of the aggregation strategies: vote counts, reference order, sliding windows.

A mixture's ``aggregation`` setting names the strategy that makes its final answer from the
last layer's answers; the strategies themselves, one module each, are in
``moa_graph.strategies``. The pieces here are pure functions they share.

Example:
    >>> count = count_votes(["... so 18.", "The answer is 20", "I get 18"], extract_number)
    >>> count.winner, count.groups
    ('18', {'18': [0, 2], '20': [1]})
    >>> shuffled(["a", "b", "c"], seed=7)
    (['c', 'a', 'b'], [2, 0, 1])
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from moa_graph.answers import Extractor, extract_number

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class VoteCount:
    """The final answer each reference states (``None``: none readable), in the order shown."""

    answers: tuple[str | None, ...]

    @property
    def groups(self) -> dict[str, list[int]]:
        """Positions (0-based) of the references stating each answer, in order of appearance."""
        groups: dict[str, list[int]] = {}
        for position, answer in enumerate(self.answers):
            if answer is not None:
                groups.setdefault(answer, []).append(position)
        return groups

    @property
    def winner(self) -> str | None:
        """The answer stated more often than any other; ``None`` on a tie or with no answers.

        Example:
            >>> VoteCount(("1", "2")).winner, VoteCount(("1", None, "1", "2")).winner
            (None, '1')
        """
        ranked = sorted((len(positions) for positions in self.groups.values()), reverse=True)
        if not ranked or (len(ranked) > 1 and ranked[0] == ranked[1]):
            return None
        return max(self.groups, key=lambda answer: len(self.groups[answer]))

    @property
    def unanimous(self) -> bool:
        """At least two references, all stating the same readable answer."""
        return len(self.answers) >= 2 and len(self.groups) == 1 and None not in self.answers

    def summary(self) -> str:
        """How the answers split, for the aggregator's prompt (responses numbered from 1).

        Example:
            >>> print(VoteCount(("18", None, "18")).summary())
            The final answers stated by the responses above split as follows:
            - "18": responses 1, 3 (2 of 3)
            - no clear final answer: response 2
            Agreement is evidence, not proof: check the reasoning before you answer.
        """
        total = len(self.answers)
        lines = ["The final answers stated by the responses above split as follows:"]
        for answer, positions in self.groups.items():
            lines.append(f'- "{answer}": {_responses(positions)} ({len(positions)} of {total})')
        unreadable = [i for i, answer in enumerate(self.answers) if answer is None]
        if unreadable:
            lines.append(f"- no clear final answer: {_responses(unreadable)}")
        lines.append("Agreement is evidence, not proof: check the reasoning before you answer.")
        return "\n".join(lines)

    def record(self) -> dict[str, Any]:
        """What ``response_metadata["moa_votes"]`` records."""
        return {"answers": list(self.answers), "winner": self.winner}


def _responses(positions: Sequence[int]) -> str:
    numbers = ", ".join(str(p + 1) for p in positions)
    return f"response{'s' if len(positions) > 1 else ''} {numbers}"


def count_votes(texts: Sequence[str], extractor: Extractor = extract_number) -> VoteCount:
    """Read the final answer of each text with ``extractor`` (an error counts as no answer)."""
    answers: list[str | None] = []
    for text in texts:
        try:
            answer = extractor(text)
        except Exception:  # a user's extractor failing on one text must not fail the run
            answer = None
        answers.append(None if answer is None else str(answer).strip() or None)
    return VoteCount(tuple(answers))


def call_seed(seed: int | None, layer: int, index: int) -> int:
    """The shuffle seed of one call: derived from ``seed`` (reproducible), else random.

    Example:
        >>> call_seed(1, 2, 0) == call_seed(1, 2, 0), call_seed(1, 2, 0) == call_seed(1, 2, 1)
        (True, False)
    """
    if seed is None:
        return random.SystemRandom().getrandbits(32)
    return zlib.crc32(f"{seed}:{layer}:{index}".encode())


def shuffled(items: Sequence[_Item], seed: int) -> tuple[list[_Item], list[int]]:
    """``items`` in an order drawn from ``seed``, and that order (original positions)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order], order


def windows(count: int, size: int | None) -> list[list[int]]:
    """Self-MoA-Seq's windows over ``count`` references (positions): the first ``size``, then
    ``size - 1`` new ones each, shown beside the previous window's synthesis.

    Example:
        >>> windows(7, 3), windows(2, 3), windows(3, None)
        ([[0, 1, 2], [3, 4], [5, 6]], [[0, 1]], [[0, 1, 2]])
    """
    if size is None or count <= size:
        return [list(range(count))]
    groups = [list(range(size))]
    for start in range(size, count, size - 1):
        groups.append(list(range(start, min(count, start + size - 1))))
    return groups
