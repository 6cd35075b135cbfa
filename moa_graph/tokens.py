"""Token counting, for the reference budget (``max_reference_tokens``), and token usage sums.

A leaf, below the settings (``token_counter`` names a counter) and the engine
(``moa_graph.engine.references``, which re-exports these names, applies the budget).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langchain_core.messages import UsageMetadata
from langchain_core.messages.ai import add_usage

__all__ = ["TokenCounter", "approximate_tokens", "sum_usage"]

TokenCounter = Callable[[str], int]
"""Counts the tokens of a text."""


def approximate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English text.

    Example:
        >>> approximate_tokens("x" * 40)
        10
    """
    return (len(text) + 3) // 4


def sum_usage(usages: Iterable[Mapping[str, Any] | None]) -> UsageMetadata:
    """The token usage of several calls added up (a call without usage counts nothing).

    Example:
        >>> usage = sum_usage([{"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}, None,
        ...                    {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}])
        >>> usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]
        (4, 3, 7)
    """
    total = UsageMetadata(input_tokens=0, output_tokens=0, total_tokens=0)
    for usage in usages:
        if usage:
            total = add_usage(total, UsageMetadata(**usage))  # type: ignore[typeddict-item]
    return total
