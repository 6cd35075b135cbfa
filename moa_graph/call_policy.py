"""How one model call is made: its deadline and retries (``CallPolicy``), read off an error's
HTTP status and ``Retry-After`` hint.

A leaf, below the models and the engine: ``models`` builds a policy for each model, the engine's
calls (``moa_graph.engine.calls``, which re-exports these names) apply it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CallPolicy", "retry_after_seconds", "status_code"]


@dataclass(frozen=True)
class CallPolicy:
    """How one model call is made.

    Args:
        timeout: seconds one attempt may take (``None``: no deadline).
        max_retries: further attempts after a transient error.
        backoff_base: delay before the first retry, doubled at each retry.
        backoff_max: upper bound of any delay, ``Retry-After`` included.
        jitter: relative random spread of each delay (0.25 means +/-25%).

    Example:
        >>> CallPolicy(timeout=30, max_retries=2).delay_before(2, None, random.Random(0)) > 0
        True
    """

    timeout: float | None = None
    max_retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    jitter: float = 0.25

    def delay_before(self, retry: int, error: BaseException | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (1-based) after ``error``."""
        hinted = retry_after_seconds(error) if error is not None else None
        if hinted is not None:
            return min(hinted, self.backoff_max)
        delay = min(self.backoff_base * 2 ** (retry - 1), self.backoff_max)
        return max(0.0, delay * (1 + self.jitter * (2 * rng.random() - 1)))


def status_code(error: BaseException) -> int | None:
    """The HTTP status an error carries (openai, httpx and most provider SDKs), if any."""
    for candidate in (error, getattr(error, "response", None)):
        code = getattr(candidate, "status_code", None)
        if isinstance(code, int):
            return code
    return None


def retry_after_seconds(error: BaseException) -> float | None:
    """The ``Retry-After`` (or ``retry-after-ms``) hint of an HTTP error, in seconds."""
    headers = getattr(getattr(error, "response", None), "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None
