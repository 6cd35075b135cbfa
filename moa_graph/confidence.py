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
