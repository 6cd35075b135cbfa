"""Results pooled over several seeds of one experiment: the same items, drawn again.

An item answered under two seeds gives two results that are not independent (the item is as
hard each time), so pooled intervals resample *items*, each with all its seeds' results (a
cluster bootstrap), and the paired test flips the sign of each item's difference over all its
seeds at once (an exact sign-flip test; with one seed it is the exact McNemar test).

Example:
    >>> a = {"q1": [True, True], "q2": [True, False], "q3": [True, True]}
    >>> b = {"q1": [False, False], "q2": [False, False], "q3": [True, True]}
    >>> pooled_accuracy(a).value
    0.8333333333333334
    >>> test = pooled_difference(a, b)
    >>> test.points, test.wins, test.losses, test.p_value
    (50.0, 3, 0, 0.5)
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moa_graph.evaluation.report import Estimate

Results = Mapping[str, Sequence[bool]]
"""Whether each draw of each item was right: item id -> one result per seed."""


@dataclass(frozen=True)
class PooledDifference:
    """System A against system B over the same items and seeds.

    ``points``: accuracy difference in percentage points (A minus B) with its 95% interval
    (``low``, ``high``); ``wins`` / ``losses``: draws A got right and B wrong, and the reverse;
    ``p_value``: exact two-sided sign-flip test over items.
    """

    points: float
    low: float
    high: float
    wins: int
    losses: int
    p_value: float
    items: int


def _checked(*results: Results) -> tuple[list[str], int]:
    items = sorted(results[0])
    if not items:
        raise ValueError("no items to pool")
    if any(sorted(result) != items for result in results):
        raise ValueError("pooled results need the same items in every system")
    draws = {len(result[item]) for result in results for item in items}
    if len(draws) != 1:
        raise ValueError("pooled results need the same number of draws for every item")
    return items, draws.pop()


def _cluster_bootstrap(
    values: Sequence[float], resamples: int, seed: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the mean of per-item values, items resampled."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]


def pooled_accuracy(results: Results, *, resamples: int = 10_000, seed: int = 0) -> Estimate:
    """Accuracy over every draw of every item, with a 95% interval that resamples items.

    ``Estimate.n`` counts the draws (items x seeds).
    """
    items, draws = _checked(results)
    per_item = [sum(results[item]) / draws for item in items]
    low, high = _cluster_bootstrap(per_item, resamples, seed)
    return Estimate(sum(per_item) / len(items), low, high, len(items) * draws)


def pooled_difference(
    a: Results, b: Results, *, resamples: int = 10_000, seed: int = 0
) -> PooledDifference:
    """A against B, paired by item and seed (see the module docstring)."""
    items, draws = _checked(a, b)
    differences = [sum(x - y for x, y in zip(a[i], b[i], strict=True)) for i in items]
    wins = sum(x and not y for i in items for x, y in zip(a[i], b[i], strict=True))
    losses = sum(y and not x for i in items for x, y in zip(a[i], b[i], strict=True))
    low, high = _cluster_bootstrap([d / draws for d in differences], resamples, seed)
    mean = sum(differences) / (len(items) * draws)
    return PooledDifference(100 * mean, 100 * low, 100 * high, wins, losses,
                            sign_flip_p(differences), len(items))  # fmt: skip


def sign_flip_p(differences: Sequence[int]) -> float:
    """Exact two-sided p of the sum of per-item differences under random signs.

    Under the null hypothesis that A and B are exchangeable within an item, each item's
    difference is as likely positive as negative; the p-value is the share of the 2**n sign
    assignments whose sum is at least as far from 0 as the one observed (counted exactly).

    Example:
        >>> sign_flip_p([1] * 6)          # McNemar: 6 wins, 0 losses
        0.03125
        >>> sign_flip_p([2, 1, -1, 0])
        0.75
    """
    observed = abs(sum(differences))
    magnitudes = [abs(d) for d in differences if d]
    counts: dict[int, int] = {0: 1}  # sum of signed magnitudes -> number of sign assignments
    for magnitude in magnitudes:
        grown: dict[int, int] = {}
        for total, ways in counts.items():
            for signed in (magnitude, -magnitude):
                grown[total + signed] = grown.get(total + signed, 0) + ways
        counts = grown
    extreme = sum(ways for total, ways in counts.items() if abs(total) >= observed)
    return min(1.0, extreme / 2 ** len(magnitudes))


__all__ = ["PooledDifference", "Results", "pooled_accuracy", "pooled_difference", "sign_flip_p"]
