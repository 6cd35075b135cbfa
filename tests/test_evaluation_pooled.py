"""Results pooled over seeds: the exact sign-flip test and intervals that resample items."""

from __future__ import annotations

import random

import pytest

from moa_graph.evaluation.pooled import pooled_accuracy, pooled_difference, sign_flip_p
from moa_graph.evaluation.scoring import mcnemar


def draws(seed: int, items: int, seeds: int, rate: float) -> dict[str, list[bool]]:
    rng = random.Random(seed)
    return {f"q{i}": [rng.random() < rate for _ in range(seeds)] for i in range(items)}


@pytest.mark.parametrize("seed", range(5))
def test_with_one_seed_the_test_is_the_exact_mcnemar_test(seed: int) -> None:
    a, b = draws(seed, 60, 1, 0.6), draws(seed + 100, 60, 1, 0.45)
    items = sorted(a)
    expected = mcnemar([a[i][0] for i in items], [b[i][0] for i in items])
    pooled = pooled_difference(a, b)
    assert (pooled.wins, pooled.losses) == (expected.only_a, expected.only_b)
    assert pooled.p_value == pytest.approx(expected.p_value)
    assert pooled.points == pytest.approx(100 * expected.difference)


def test_the_test_pairs_whole_items_across_seeds() -> None:
    # one item right twice against wrong twice is one sign to flip, not two independent ones
    assert sign_flip_p([2]) == 1.0
    assert sign_flip_p([1, 1]) == 0.5
    assert sign_flip_p([2] * 5) == pytest.approx(2 / 32)
    a, b = draws(1, 80, 2, 0.65), draws(2, 80, 2, 0.45)
    forward, backward = pooled_difference(a, b), pooled_difference(b, a)
    assert forward.points == pytest.approx(-backward.points) and forward.p_value == backward.p_value
    assert (forward.wins, forward.losses) == (backward.losses, backward.wins)
    assert forward.low < forward.points < forward.high


def test_pooled_accuracy_counts_every_draw_and_resamples_items() -> None:
    same = {item: [right, right] for item, [right] in draws(3, 100, 1, 0.5).items()}
    single = {item: [results[0]] for item, results in same.items()}
    pooled, alone = pooled_accuracy(same), pooled_accuracy(single)
    assert pooled.value == alone.value and pooled.n == 200 and alone.n == 100
    # a second draw that repeats the first adds no information: the interval stays as wide
    assert pooled.high - pooled.low == pytest.approx(alone.high - alone.low)
    fresh = pooled_accuracy(draws(4, 100, 2, 0.5))
    assert fresh.high - fresh.low < pooled.high - pooled.low  # independent draws narrow it


def test_mismatched_results_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        pooled_difference({"q1": [True]}, {"q2": [True]})
    with pytest.raises(ValueError, match="same number of draws"):
        pooled_accuracy({"q1": [True], "q2": [True, False]})
    with pytest.raises(ValueError, match="no items"):
        pooled_accuracy({})
