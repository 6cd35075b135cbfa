"""One model call made safe: a deadline per attempt, retries with backoff, clear failures.

Transient errors (HTTP 408/409/429/5xx, connection errors, malformed or empty answers) are
retried with exponential backoff and jitter, honouring ``Retry-After``; errors that cannot
succeed on a retry (400, 401, 403, 404, 422, context too long) fail at once. A timed-out attempt
is cancelled and not retried: the timeout is the proposer's whole budget for that attempt.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
PERMANENT_CODES = frozenset({"context_length_exceeded", "invalid_api_key", "model_not_found"})


class CallTimeoutError(TimeoutError):
    """A model call did not answer within its deadline (it was cancelled)."""


class EmptyAnswerError(RuntimeError):
    """A model answered with no text and no tool calls."""


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


def is_transient(error: BaseException) -> bool:
    """Whether retrying ``error`` can succeed.

    Example:
        >>> is_transient(ConnectionResetError()), is_transient(ValueError("bad"))
        (True, False)
    """
    if isinstance(error, CallTimeoutError):
        return False
    code = getattr(error, "code", None)
    if isinstance(code, str) and code in PERMANENT_CODES:
        return False
    if type(error).__name__ == "ContextOverflowError":
        return False
    status = status_code(error)
    if status is not None:
        return status in RETRYABLE_STATUS
    if isinstance(error, EmptyAnswerError | json.JSONDecodeError | ConnectionError):
        return True
    name = type(error).__name__
    return any(word in name for word in ("Connection", "Timeout", "RemoteProtocol", "ReadError"))


def check_answer(message: BaseMessage) -> BaseMessage:
    """Refuse an answer with neither text nor tool calls (``EmptyAnswerError``)."""
    if not message.text.strip() and not getattr(message, "tool_calls", None):
        raise EmptyAnswerError("the model answered with empty text")
    return message


async def call_with_policy(
    attempt: Callable[[], Awaitable[BaseMessage]],
    policy: CallPolicy,
    *,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], Any] | None = None,
) -> tuple[BaseMessage, int]:
    """Run ``attempt`` under ``policy``; returns the answer and the number of attempts made.

    Raises the last error when retries are exhausted or the error is not transient, and
    ``CallTimeoutError`` when an attempt exceeds ``policy.timeout``.
    """
    rng = rng or random.Random()
    attempts = 0
    while True:
        attempts += 1
        try:
            message = await _with_deadline(attempt(), policy.timeout)
            return check_answer(message), attempts
        except Exception as error:
            if attempts > policy.max_retries or not is_transient(error):
                raise
            delay = policy.delay_before(attempts, error, rng)
            if on_retry is not None:
                on_retry(attempts, error, delay)
            await asyncio.sleep(delay)


async def _with_deadline(call: Awaitable[BaseMessage], timeout: float | None) -> BaseMessage:
    if timeout is None:
        return await call
    try:
        return await asyncio.wait_for(call, timeout)
    except TimeoutError:
        raise CallTimeoutError(f"no answer within {timeout:g}s") from None
