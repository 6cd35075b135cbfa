"""How sure a model was of its answer, from the log-probabilities of the tokens it wrote.

A proposal's ``confidence`` is the geometric mean of its tokens' probabilities,
``exp(mean log-probability)``: the length-normalised sequence probability that Confidence-
Informed Self-Consistency (CISC, Taubenfeld et al., arXiv 2502.06233) weights votes with. It
costs nothing but the log-probabilities the server returns with the answer.

Example:
    >>> from langchain_core.messages import AIMessage
    >>> tokens = [{"token": "4", "logprob": -0.1}, {"token": "2", "logprob": -0.3}]
    >>> answer_confidence(AIMessage("42", response_metadata={"logprobs": {"content": tokens}}))
    0.8187
    >>> [round(w, 3) for w in confidence_weights([0.9, 0.5, 0.5], temperature=0.25)]
    [0.84, 0.08, 0.08]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def answer_confidence(message: Any) -> float | None:
    """``exp`` of the mean log-probability of the answer's tokens (``None`` without them)."""
    logprobs = (getattr(message, "response_metadata", None) or {}).get("logprobs") or {}
    values = [
        token["logprob"]
        for token in logprobs.get("content") or []
        if isinstance(token, dict) and isinstance(token.get("logprob"), float | int)
    ]
    if not values:
        return None
    return round(math.exp(sum(values) / len(values)), 4)


def confidence_weights(confidences: Sequence[float], temperature: float) -> list[float]:
    """CISC's weights: a softmax of the log-confidences (mean log-probabilities) divided by
    ``temperature``; lower temperatures trust the most confident answers more."""
    scores = [math.log(max(confidence, 1e-12)) / temperature for confidence in confidences]
    top = max(scores)
    exps = [math.exp(score - top) for score in scores]
    return [value / sum(exps) for value in exps]


def weighted_votes(
    answers: Sequence[str | None], confidences: Sequence[float | None], temperature: float
) -> dict[str, float]:
    """Each final answer's total weight: the answers with a confidence vote, weighted by
    :func:`confidence_weights` (answers ``None``, unreadable, and those without a confidence do
    not vote).

    Example:
        >>> totals = weighted_votes(["18", "20", "20", None], [0.9, 0.5, 0.5, 0.99], 0.25)
        >>> max(totals, key=totals.__getitem__), round(sum(totals.values()), 6)
        ('18', 1.0)
    """
    voters = [i for i, answer in enumerate(answers)
              if answer is not None and confidences[i] is not None]  # fmt: skip
    if not voters:
        return {}
    weights = confidence_weights([float(confidences[i] or 0.0) for i in voters], temperature)
    totals: dict[str, float] = {}
    for position, weight in zip(voters, weights, strict=True):
        answer = str(answers[position])
        totals[answer] = totals.get(answer, 0.0) + weight
    return totals


def clear_winner(totals: dict[str, float]) -> str | None:
    """The answer with the most weight, or ``None`` when there is none or the top two tie."""
    ranked = sorted(totals.values(), reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[0] - ranked[1] <= 1e-9):
        return None
    return max(totals, key=lambda answer: totals[answer])
