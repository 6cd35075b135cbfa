"""The aggregation strategies, one module each, found by this registry.

The ``aggregation`` setting names one of them, or is a ``Strategy`` instance itself. The
registry holds:

- the built-in strategies: a module here that defines a ``Strategy`` subclass and
  ``STRATEGY = YourStrategy()``;
- the strategies other distributions declare in the entry-point group ``moa_graph.strategies``
  (``name = "module:instance"``, see ``ENTRY_POINT_GROUP``).

Each is then a valid ``aggregation`` value everywhere (Python, recipes, ``--aggregation``,
per-run choices, the server) and is listed in ``moa-graph settings`` and ``--help``.

Example:
    >>> names()[:5]
    ('synthesize', 'vote', 'weighted_vote', 'rank', 'synthesize_with_votes')
    >>> get("vote").picks_reference
    True
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from functools import cache
from importlib.metadata import entry_points

from moa_graph.strategies.base import Strategy

__all__ = [
    "ENTRY_POINT_GROUP",
    "Strategy",
    "all_strategies",
    "built_in",
    "from_entry_points",
    "get",
    "name_of",
    "names",
    "refresh",
]

ENTRY_POINT_GROUP = "moa_graph.strategies"
"""The entry-point group another distribution declares its strategies in, e.g. in its
``pyproject.toml``::

    [project.entry-points."moa_graph.strategies"]
    longest = "my_package.strategies:LONGEST"

The name is the ``aggregation`` value; the object a ``Strategy`` instance whose ``name`` is that
name. A built-in name cannot be taken; an entry point that fails to load is skipped with a
warning naming it (the rest of moa_graph keeps working)."""


@cache
def built_in() -> tuple[Strategy, ...]:
    """The strategy modules' ``STRATEGY`` instances, in their ``order``."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        strategy = getattr(importlib.import_module(f"{__name__}.{module.name}"), "STRATEGY", None)
        if isinstance(strategy, Strategy):
            found.append(strategy)
    return tuple(sorted(found, key=lambda strategy: (strategy.order, strategy.name)))


@cache
def from_entry_points() -> tuple[Strategy, ...]:
    """The strategies of the ``moa_graph.strategies`` entry points, in their ``order``."""
    taken = {strategy.name for strategy in built_in()}
    found: dict[str, Strategy] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        where = f"entry point {point.name} = {point.value!r} ({ENTRY_POINT_GROUP})"
        if point.name in taken or point.name in found:
            warnings.warn(f"{where}: the name {point.name!r} is taken; skipped", stacklevel=2)
            continue
        try:
            strategy = point.load()
        except Exception as exc:  # a broken plugin must not break the package
            warnings.warn(f"{where}: cannot be loaded ({exc!r}); skipped", stacklevel=2)
            continue
        if not isinstance(strategy, Strategy) or getattr(strategy, "name", None) != point.name:
            warnings.warn(
                f"{where}: expected a Strategy instance named {point.name!r}, got "
                f"{strategy!r}; skipped",
                stacklevel=2,
            )
            continue
        found[point.name] = strategy
    return tuple(sorted(found.values(), key=lambda strategy: (strategy.order, strategy.name)))


def all_strategies() -> tuple[Strategy, ...]:
    """Every strategy: the built-in ones, then those of entry points."""
    return built_in() + from_entry_points()


def names() -> tuple[str, ...]:
    """The strategies' names: the valid ``aggregation`` names."""
    return tuple(strategy.name for strategy in all_strategies())


def get(name: str | Strategy) -> Strategy:
    """The strategy called ``name`` (a ``Strategy`` is itself); ``KeyError`` for an unknown
    name (settings check names first). Entry points are read only for a name that is not
    built in."""
    if isinstance(name, Strategy):
        return name
    for strategy in built_in():
        if strategy.name == name:
            return strategy
    for strategy in from_entry_points():
        if strategy.name == name:
            return strategy
    raise KeyError(name)


def name_of(aggregation: str | Strategy) -> str:
    """The name of an ``aggregation`` value (a name, or a ``Strategy`` instance).

    Example:
        >>> name_of("vote"), name_of(get("rank"))
        ('vote', 'rank')
    """
    return aggregation.name if isinstance(aggregation, Strategy) else aggregation


def refresh() -> None:
    """Read the entry points again (after installing a distribution in a running process)."""
    from_entry_points.cache_clear()
