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
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from statistics import NormalDist, fmean

from moa_graph.evaluation.datasets import LETTERS, Item, Metric

_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_FINAL_MARKERS = (
    re.compile(r"####"),
    re.compile(r"\\boxed\{"),
    re.compile(r"(?i:answer)\s*(?:is|:|=)"),
)


def parse_number(text: str) -> Decimal | None:
    """The number a short answer states (``"1,234"``, ``"$18.00"``, ``"-3"``), else ``None``.

    Example:
        >>> parse_number("$1,234.50"), parse_number("18.")
        (Decimal('1234.50'), Decimal('18'))
        >>> parse_number("eighteen") is None
        True
    """
    cleaned = text.strip().replace(",", "").replace("$", "").replace("\u2212", "-")
    cleaned = cleaned.removesuffix("%").rstrip(".").strip()
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _normal_form(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def extract_number(text: str) -> str | None:
    """The final numeric answer of a reply, normalized (``"1,234.00"`` -> ``"1234"``).

    Looks after the last ``####`` (GSM8K's own format), else inside the last ``\\boxed{}``,
    else after the last "answer is" / "Answer:"; failing those, takes the last number of the
    reply. Thousands separators, ``$`` and a sentence's final period are ignored; a hyphen
    between two numbers (``3-4``) is not a minus sign.

    Example:
        >>> extract_number("So 3-4 = -1? No: #### 1,234")
        '1234'
        >>> extract_number("The answer is -5. (Not 7.)")
        '-5'
        >>> extract_number("no digits here") is None
        True
    """
    text = text.replace("\u2212", "-")
    for marker in _FINAL_MARKERS:
        found = list(marker.finditer(text))
        if found:
            number = _NUMBER.search(text, found[-1].end())
            if number:
                return _normalized(number.group())
    numbers = _NUMBER.findall(text)
    return _normalized(numbers[-1]) if numbers else None


def _normalized(number: str) -> str:
    value = parse_number(number)
    assert value is not None  # the regular expression only matches numbers
    return _normal_form(value)


def numbers_match(prediction: str | None, gold: str) -> bool:
    """Whether an extracted number equals the gold number (``"18.0"`` equals ``"18"``).

    Example:
        >>> numbers_match("18.0", "18"), numbers_match(None, "18")
        (True, False)
    """
    if prediction is None:
        return False
    left, right = parse_number(prediction), parse_number(gold)
    return left is not None and right is not None and left == right


_CHOICE_AFTER_ANSWER = re.compile(
    r"(?i:answer|option|choice)\s*(?:is|:|=)?\s*(?:(?i:option|choice)\s*)?[\(\[*\"']*([A-J])\b"
)
_ONLY_LETTER = re.compile(r"^\W*([A-J])\W*$")
_LEADING_LETTER = re.compile(r"(?m)^[\s*#>(\[]*([A-J])\s*[).:\]]")
_PARENTHESIZED_LETTER = re.compile(r"\(([A-J])\)")


def extract_choice(text: str, n_choices: int, choices: Sequence[str] = ()) -> str | None:
    """The option letter a reply picks, or ``None`` when it is unclear.

    In order: the last "Answer: X" / "answer is (X)" / "option X"; a reply that is only a
    letter; one letter opening a line (``"C. ..."``, ``"(C)"``), if only one letter does; the
    one option text the reply quotes; the one parenthesized letter. Letters beyond
    ``n_choices`` are ignored, and an article "A" inside a sentence never counts.

    Example:
        >>> extract_choice("A planet spins faster, so days are shorter. The answer is **C**.", 4)
        'C'
        >>> extract_choice("B", 4), extract_choice("E", 4)
        ('B', None)
        >>> extract_choice("Days will become shorter.", 4,
        ...                ["Density drops.", "Years get longer.", "Days will become shorter."])
        'C'
    """
    letters = LETTERS[:n_choices]
    picked = [m for m in _CHOICE_AFTER_ANSWER.findall(text) if m in letters]
    if picked:
        return picked[-1]
    only = _ONLY_LETTER.match(text)
    if only and only.group(1) in letters:
        return only.group(1)
    leading = {m for m in _LEADING_LETTER.findall(text) if m in letters}
    if len(leading) == 1:
        return leading.pop()
    quoted = _quoted_options(text, choices)
    if len(quoted) == 1:
        return letters[quoted[0]]
    parenthesized = {m for m in _PARENTHESIZED_LETTER.findall(text) if m in letters}
    if len(parenthesized) == 1:
        return parenthesized.pop()
    return None


def _quoted_options(text: str, choices: Sequence[str]) -> list[int]:
    reply = normalize_text(text)
    return [
        i for i, option in enumerate(choices) if (norm := normalize_text(option)) and norm in reply
    ]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalization).

    Example:
        >>> normalize_text("  The Eiffel   Tower!")
        'eiffel tower'
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


_FINAL_LINE = re.compile(r"(?i:final answer|answer)\s*(?:is|:)\s*(.+)")


def final_answer_text(text: str) -> str:
    """The short answer of a reply: after the last "Answer:" / "answer is", else the last line.

    Example:
        >>> final_answer_text("Let me think.\\nParis is the capital.\\nFinal answer: Paris.")
        'Paris.'
    """
    found = _FINAL_LINE.findall(text)
    if found:
        return str(found[-1]).strip()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def exact_match(reply: str, gold: str) -> bool:
    """Whether the reply's short answer equals the gold answer after normalization.

    Example:
        >>> exact_match("I believe the answer is: the Eiffel Tower", "Eiffel tower")
        True
        >>> exact_match("Eiffel Tower, Paris", "Eiffel tower")
        False
    """
    return normalize_text(final_answer_text(reply)) == normalize_text(gold)


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

    ``only_a``: items A got right and B wrong; ``only_b``: the reverse; ``p_value``: two-sided.
    """

    only_a: int
    only_b: int
    p_value: float


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """Paired exact McNemar test (binomial on the discordant pairs, two-sided).

    Example:
        >>> result = mcnemar([True] * 10 + [False] * 2, [False] * 10 + [True] * 2)
        >>> result.only_a, result.only_b, round(result.p_value, 4)
        (10, 2, 0.0386)
    """
    if len(a) != len(b):
        raise ValueError(f"mcnemar: paired results differ in length ({len(a)} != {len(b)})")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return McNemar(0, 0, 1.0)
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))
    return McNemar(only_a, only_b, min(1.0, 2 * tail / 2**n))
