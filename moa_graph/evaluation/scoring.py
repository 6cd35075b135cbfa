"""Scoring with gold answers: answer extraction, exact match, confidence intervals, McNemar.

Example:
    >>> extract_number("16 - 3 - 4 = 9 eggs, 9 * 2 = $18.\\nThe answer is 18.")
    '18'
    >>> extract_choice("Planetary days get shorter.\\nAnswer: (C)", 4)
    'C'
    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, fmean

from moa_graph.answers import (
    exact_match,
    extract_choice,
    extract_number,
    final_answer_text,
    numbers_match,
)
from moa_graph.evaluation.datasets import Item, Metric


@dataclass(frozen=True)
class Score:
    """A scored answer: ``correct`` (``None`` when a judge must decide) and what was extracted."""

    correct: bool | None
    extracted: str | None = None

    @property
    def value(self) -> float | None:
        """1.0 / 0.0 for right / wrong, ``None`` when unscored."""
        return None if self.correct is None else float(self.correct)


def score_answer(metric: Metric, item: Item, reply: str) -> Score:
    """Score a reply (the answer to the item's last turn) against the item's gold answer.

    Example:
        >>> item = Item(id="x/1", turns=("2+2?",), gold="4")
        >>> score_answer("numeric", item, "2 + 2 = 4")
        Score(correct=True, extracted='4')
    """
    if metric == "judge" or item.gold is None:
        return Score(None)
    if metric == "numeric":
        number = extract_number(reply)
        return Score(numbers_match(number, item.gold), number)
    if metric == "choice":
        letter = extract_choice(reply, len(item.choices), item.choices)
        return Score(letter == item.gold, letter)
    return Score(exact_match(reply, item.gold), final_answer_text(reply))


def is_right(metric: Metric, item: Item, reply: str | None) -> bool:
    """Whether ``reply`` is right, as ``score_answer`` scores it (no reply, or no gold: not right).

    Example:
        >>> is_right("numeric", Item(id="x/1", turns=("2+2?",), gold="4"), None)
        False
    """
    return reply is not None and bool(score_answer(metric, item, reply).correct)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sound for small n and for 0% or 100%).

    Example:
        >>> wilson_interval(0, 0)
        (0.0, 1.0)
        >>> low, high = wilson_interval(10, 10)
        >>> round(low, 3), high
        (0.722, 1.0)
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean (for judge ratings and win rates).

    Deterministic for a given ``seed``.

    Example:
        >>> low, high = bootstrap_interval([1.0, 0.0, 1.0, 0.5] * 10)
        >>> low < 0.625 < high
        True
    """
    if not values:
        return math.nan, math.nan
    _z(confidence)  # validates it
    rng = random.Random(seed)
    n = len(values)
    means = sorted(fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - confidence) / 2
    low = means[math.floor(tail * (resamples - 1))]
    high = means[math.ceil((1 - tail) * (resamples - 1))]
    return low, high


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test of two systems scored right/wrong on the same items.

    ``only_a``: items A got right and B wrong; ``only_b``: the reverse; ``p_value``: two-sided;
    ``n``: the paired items; ``difference``: A's accuracy minus B's on them, with ``low`` and
    ``high`` its 95% interval (:func:`paired_difference_interval`).
    """

    only_a: int
    only_b: int
    p_value: float
    n: int = 0
    difference: float = 0.0
    low: float = math.nan
    high: float = math.nan


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Paired exact McNemar test (binomial on the discordant pairs, two-sided).

    Example:
        >>> result = mcnemar([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
        >>> result.only_a, result.only_b, round(result.p_value, 4)
        (10, 2, 0.0386)
        >>> round(result.difference, 3), result.low > 0
        (0.667, True)
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar: paired results differ in length ({len(a)} != {len(b)})")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    low, high = paired_difference_interval(only_a, only_b, len(a))
    discordant = only_a + only_b
    p_value = 1.0
    if discordant:
        tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
        p_value = min(1.0, 2 * tail / 2**discordant)
    difference = (only_a - only_b) / len(a) if a else 0.0
    return McNemar(only_a, only_b, p_value, len(a), difference, low, high)


def paired_difference_interval(
    only_a: int, only_b: int, n: int, confidence: float = 0.95
) -> tuple[float, float]:
    """Interval of A's accuracy minus B's over ``n`` paired items, from the discordant counts.

    Bonett and Price's adjusted Wald interval (J. Educ. Behav. Stat. 37, 2012): one pseudo-item
    is added to each discordant cell, which keeps the interval sound with few or no discordant
    items, where a bootstrap collapses to a point.

    Example:
        >>> [round(x, 3) for x in paired_difference_interval(4, 0, 10)]
        [-0.02, 0.686]
    """
    if not (only_a >= 0 and only_b >= 0 and only_a + only_b <= n):
        raise ValueError(f"need discordant counts within n, got {only_a} + {only_b} of {n}")
    if n == 0:
        return math.nan, math.nan
    z = _z(confidence)
    p_a, p_b = (only_a + 1) / (n + 2), (only_b + 1) / (n + 2)
    half = z * math.sqrt((p_a + p_b - (p_a - p_b) ** 2) / (n + 2))
    return max(-1.0, p_a - p_b - half), min(1.0, p_a - p_b + half)
