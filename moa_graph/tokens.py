"""Token counting, for the reference budget (``max_reference_tokens``).

A leaf, below the settings (``token_counter`` names a counter) and the engine
(``moa_graph.engine.references``, which re-exports these names, applies the budget).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["TokenCounter", "approximate_tokens"]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""


def approximate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English text.

    Example:
        >>> approximate_tokens("x" * 40)
        10
    """
    return (len(text) + 3) // 4
