"""Answer extraction, exact match, confidence intervals and the paired McNemar test."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from moa_graph.answers import (
    exact_match,
    extract_choice,
    extract_number,
    final_answer_text,
    numbers_match,
)
from moa_graph.evaluation.datasets import Item, load_gsm8k
from moa_graph.evaluation.scoring import (
    bootstrap_interval,
    mcnemar,
    paired_difference_interval,
    score_answer,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Janet makes 9 * 2 = $18 every day.\n#### 18", "18"),
        ("First 1,000 then 2,500.\n#### 1,234", "1234"),
        ("The answer is $1,234.50.", "1234.5"),
        ("The answer is 18.00", "18"),
        ("So 3-4 is -1, but the answer is 7. (Not 8.)", "7"),
        ("We get \\boxed{42} after checking 43 cases.", "42"),
        ("Temperature drops to -5 degrees overnight", "-5"),
        ("Steps 1, 2 and 3 give 12 apples", "12"),
        ("The list 1,2,3 has three items", "3"),  # not one thousand-separated number
        ("It costs 0.50 dollars", "0.5"),
        ("The answer is 0", "0"),
        ("Answer: \u22123", "-3"),  # unicode minus sign
        ("No number in this reply.", None),
        ("The answer is unclear, maybe 12 or 13", "12"),  # first number after the marker
    ],
)
def test_extract_number_handles_tricky_replies(reply: str, expected: str | None) -> None:
    assert extract_number(reply) == expected


def test_every_gsm8k_reference_solution_scores_as_correct() -> None:
    dataset = load_gsm8k()
    wrong = [
        item.id
        for item in dataset
        if not score_answer("numeric", item, item.meta["solution"]).correct
    ]
    assert wrong == []


def test_numbers_match_compares_values_not_strings() -> None:
    assert numbers_match("18.0", "18") and numbers_match("2125", "2,125")
    assert not numbers_match("18", "19") and not numbers_match(None, "1")
    assert not numbers_match("x", "1")


@pytest.mark.parametrize(
    ("reply", "n", "expected"),
    [
        ("Answer: C", 4, "C"),
        ("The answer is (B).", 4, "B"),
        ("answer is **D**", 4, "D"),
        ("I think option A is right.", 4, "A"),
        ("B", 4, "B"),
        ("(c)", 4, None),  # lower case letters are words, not options
        ("  D.  ", 4, "D"),
        ("C. Planetary days will become shorter.", 4, "C"),
        ("A planet that spins faster has shorter days. Answer: C", 4, "C"),
        ("A planet that spins faster has shorter days.", 4, None),  # article A
        ("All of the above seem plausible.", 4, None),
        ("Answer: E", 4, None),  # beyond the options
        ("Answer: E", 5, "E"),
        ("A. red\nB. blue\nC. green", 4, None),  # echoing all options is no answer
        ("It is between (A) and (B).", 4, None),
        ("I would pick (B) here.", 4, "B"),
        ("First I thought Answer: A, but the answer is B", 4, "B"),  # the last one counts
    ],
)
def test_extract_choice_handles_tricky_replies(reply: str, n: int, expected: str | None) -> None:
    assert extract_choice(reply, n) == expected


def test_extract_choice_falls_back_to_the_one_quoted_option_text() -> None:
    options = ["Planetary density will decrease.", "Planetary days will become shorter."]
    assert extract_choice("I believe planetary days will become shorter", 2, options) == "B"
    assert extract_choice("density will decrease or days will become shorter?", 2, options) is None


def test_choice_scoring_uses_the_items_options() -> None:
    item = Item(id="a/1", turns=("q",), gold="B", choices=("cat", "dog", "cow"))
    assert score_answer("choice", item, "Clearly the dog.").correct is True
    assert score_answer("choice", item, "Answer: A").extracted == "A"
    assert score_answer("judge", item, "Answer: B").correct is None


def test_exact_match_normalizes_and_uses_the_final_answer() -> None:
    assert exact_match("Let me think.\nFinal answer: The Eiffel Tower!", "eiffel tower")
    assert exact_match("Paris", "paris.")
    assert not exact_match("Paris, France", "Paris")
    assert final_answer_text("line one\n\nline two\n") == "line two"
    assert final_answer_text("") == ""


def test_wilson_interval_matches_known_values() -> None:
    # Reference values (Wilson score interval, z = 1.959964).
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(660, 1319)
    assert low < 660 / 1319 < high and round(high - low, 3) == 0.054
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.5)


def test_bootstrap_interval_is_deterministic_and_close_to_the_normal_interval() -> None:
    rng = random.Random(1)
    values = [rng.uniform(1, 10) for _ in range(400)]
    first = bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=7)
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = 1.96 * sd / math.sqrt(len(values))
    assert first[0] < mean < first[1]
    assert abs((first[1] - first[0]) - 2 * half) < 0.25 * 2 * half
    assert all(math.isnan(x) for x in bootstrap_interval([]))
    assert bootstrap_interval([5.0] * 10) == (5.0, 5.0)


def test_mcnemar_exact_p_values() -> None:
    result = mcnemar([True] * 10 + [False] * 2 + [True] * 5, [False] * 10 + [True] * 2 + [True] * 5)
    assert (result.only_a, result.only_b) == (10, 2)
    assert result.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar([False] * 6, [True] * 6).p_value == pytest.approx(2 / 64)
    assert mcnemar([True, False], [True, False]).p_value == 1.0
    assert mcnemar([True, False], [False, True]).p_value == 1.0
    big = mcnemar([True] * 700 + [False] * 600, [False] * 700 + [True] * 600)
    assert 0 < big.p_value < 0.01
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar([True], [True, False])


def test_paired_difference_interval() -> None:
    """Bonett-Price adjusted Wald: sound with few discordant items, agreeing with McNemar."""
    result = mcnemar([True] * 10 + [False] * 2 + [True] * 5, [False] * 10 + [True] * 2 + [True] * 5)
    assert (result.n, result.difference) == (17, pytest.approx(8 / 17))
    # by hand: (11 - 3) / 19 -/+ 1.96 * sqrt((14 / 19 - (8 / 19) ** 2) / 19)
    half = NormalDist().inv_cdf(0.975) * math.sqrt((14 / 19 - (8 / 19) ** 2) / 19)
    assert (result.low, result.high) == pytest.approx((8 / 19 - half, 8 / 19 + half))
    assert result.low > 0 and result.p_value < 0.05  # both say A is better
    four_losses = paired_difference_interval(0, 4, 19)
    assert four_losses[0] < 0 < four_losses[1]  # McNemar p = 0.125: no difference shown
    low, high = paired_difference_interval(0, 0, 19)  # identical answers: narrow, not a point
    assert low == pytest.approx(-high) and 0.05 < high < 0.2
    assert paired_difference_interval(12, 0, 12)[1] == 1.0  # clipped to the possible range
    assert all(math.isnan(x) for x in paired_difference_interval(0, 0, 0))
    with pytest.raises(ValueError, match="discordant counts"):
        paired_difference_interval(3, 2, 4)
