"""The aggregation strategies, one module each, found by this registry.

The ``aggregation`` setting names one of them. To add a strategy, add a module here that
defines a ``Strategy`` subclass and ``STRATEGY = YourStrategy()``: it is then a valid
``aggregation`` value everywhere (Python, recipes, ``--aggregation``, per-run choices) and is
listed in ``moa-graph ask --help``.

Example:
    >>> names()
    ('synthesize', 'vote', 'weighted_vote', 'rank', 'synthesize_with_votes')
    >>> get("vote").picks_reference
    True
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from moa_graph.engine.strategies.base import Strategy

__all__ = ["Strategy", "all_strategies", "get", "names"]


@cache
def all_strategies() -> tuple[Strategy, ...]:
    """Every strategy module's ``STRATEGY``, in their ``order``."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        strategy = getattr(importlib.import_module(f"{__name__}.{module.name}"), "STRATEGY", None)
        if isinstance(strategy, Strategy):
            found.append(strategy)
    return tuple(sorted(found, key=lambda strategy: (strategy.order, strategy.name)))


def names() -> tuple[str, ...]:
    """The strategies' names: the valid values of the ``aggregation`` setting."""
    return tuple(strategy.name for strategy in all_strategies())


def get(name: str) -> Strategy:
    """The strategy called ``name`` (``KeyError`` for an unknown one; settings check names)."""
    for strategy in all_strategies():
        if strategy.name == name:
            return strategy
    raise KeyError(name)
