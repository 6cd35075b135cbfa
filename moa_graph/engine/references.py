"""Choose the references a layer passes on, and fit them to a context budget.

Budget rule (per-reference share): with a budget of B tokens for n references, each reference
gets an equal share; a reference shorter than its share keeps all of its text and leaves the
rest to the others (water-filling), and a longer one is cut to its share and ends with
``TRUNCATION_MARK``. No reference is ever dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from moa_graph.state import Proposal
from moa_graph.tokens import TokenCounter, approximate_tokens

__all__ = [
    "TRUNCATION_MARK", "TokenCounter", "Truncation", "answered", "approximate_tokens",
    "fit_to_budget",
]  # fmt: skip

TRUNCATION_MARK = " [...truncated]"


@dataclass(frozen=True)
class Truncation:
    """A reference that was cut to fit the budget."""

    layer: int
    index: int
    tokens: int
    kept_tokens: int


def answered(proposals: Sequence[Proposal], layer: int) -> list[Proposal]:
    """The proposals of ``layer`` that answered, in configured order (failures left out).

    Example:
        >>> ps = [{"layer": 1, "index": 1, "text": "b", "error": None},
        ...       {"layer": 1, "index": 0, "text": "a", "error": None},
        ...       {"layer": 1, "index": 2, "text": "", "error": "boom"}]
        >>> [p["text"] for p in answered(ps, 1)]
        ['a', 'b']
    """
    chosen = [p for p in proposals if p["layer"] == layer and p["error"] is None]
    return sorted(chosen, key=lambda p: p["index"])


def fit_to_budget(
    chosen: Sequence[Proposal],
    budget: int | None,
    count_tokens: TokenCounter = approximate_tokens,
) -> tuple[list[str], list[Truncation]]:
    """Apply the per-reference share rule; returns the texts and what was cut.

    Example:
        >>> ps = [{"layer": 1, "index": 0, "text": "a" * 8, "error": None},
        ...       {"layer": 1, "index": 1, "text": "b" * 400, "error": None}]
        >>> texts, cuts = fit_to_budget(ps, budget=52)
        >>> len(texts[0]), texts[1].endswith("[...truncated]"), cuts[0].kept_tokens
        (8, True, 50)
    """
    texts = [p["text"] for p in chosen]
    if budget is None or not texts:
        return texts, []
    sizes = [count_tokens(text) for text in texts]
    shares = _water_fill(sizes, budget)
    truncations: list[Truncation] = []
    for position, (proposal, size, share) in enumerate(zip(chosen, sizes, shares, strict=True)):
        if size > share:
            keep_chars = max(0, len(texts[position]) * share // max(size, 1))
            texts[position] = texts[position][:keep_chars].rstrip() + TRUNCATION_MARK
            truncations.append(Truncation(proposal["layer"], proposal["index"], size, share))
    return texts, truncations


def _water_fill(sizes: Sequence[int], budget: int) -> list[int]:
    shares = [0] * len(sizes)
    remaining, left = budget, len(sizes)
    for position in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        share = remaining // left
        shares[position] = min(sizes[position], share)
        remaining -= shares[position]
        left -= 1
    return shares
