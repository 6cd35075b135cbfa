"""Final answers inside free text: a number, an option letter, or a short phrase.

These extractors read the answer a reply commits to. The ``vote`` aggregation counts them, early
exit compares them, and the evaluation harness scores them against gold answers.
``get_extractor`` turns a name (``"number"``, ``"choice"``) or a function into an extractor.

Example:
    >>> extract_number("16 - 3 - 4 = 9 eggs, 9 * 2 = $18.\\nThe answer is 18.")
    '18'
    >>> extract_choice("Planetary days get shorter.\\nAnswer: (C)", 4)
    'C'
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

LETTERS = "ABCDEFGHIJ"
"""Option letters of multiple-choice questions, in order."""

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


Extractor = Callable[[str], "str | None"]
"""Reads the final answer of a reply (``None`` when it states none)."""

EXTRACTORS: dict[str, Extractor] = {
    "number": extract_number,
    "choice": lambda text: extract_choice(text, 5),
}
"""Extractors by name: ``number`` (math word problems) and ``choice`` (option letters A-E)."""


def get_extractor(extractor: str | Extractor) -> Extractor:
    """The extractor called ``extractor``, or ``extractor`` itself when it is a function.

    Example:
        >>> get_extractor("number")("so the total is 1,200.")
        '1200'
        >>> get_extractor(str.strip)("  Paris ")
        'Paris'
        >>> get_extractor("letter")
        Traceback (most recent call last):
        ...
        ValueError: answer_extractor: unknown 'letter'; give number, choice or a function
    """
    if callable(extractor):
        return extractor
    if isinstance(extractor, str) and extractor in EXTRACTORS:
        return EXTRACTORS[extractor]
    raise ValueError(
        f"answer_extractor: unknown {extractor!r}; give {', '.join(EXTRACTORS)} or a function"
    )


def extractor_name(extractor: str | Extractor | None) -> str | None:
    """How an extractor is recorded in metadata: its name, or the function's qualified name."""
    if extractor is None or isinstance(extractor, str):
        return extractor
    return getattr(extractor, "__qualname__", type(extractor).__name__)
