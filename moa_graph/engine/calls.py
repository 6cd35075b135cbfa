"""One model call made safe: a deadline per attempt, retries with backoff, clear failures.

Transient errors (HTTP 408/409/429/5xx, connection errors, malformed or empty answers) are
retried with exponential backoff and jitter, honouring ``Retry-After``; errors that cannot
succeed on a retry (400, 401, 403, 404, 422, context too long) fail at once. A timed-out attempt
is cancelled and not retried: the timeout is the proposer's whole budget for that attempt.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.messages import BaseMessage

from moa_graph.call_policy import CallPolicy, status_code
from moa_graph.engine.race import LayerRace

__all__ = ["CallPolicy"]  # re-exported from call_policy

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
PERMANENT_CODES = frozenset({"context_length_exceeded", "invalid_api_key", "model_not_found"})


class CallTimeoutError(TimeoutError):
    """A model call did not answer within its deadline (it was cancelled)."""


class EmptyAnswerError(RuntimeError):
    """A model answered with no text and no tool calls."""


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
    if status is not None and status >= 400:  # a body that failed to parse may carry a 200
        return status in RETRYABLE_STATUS
    if isinstance(error, EmptyAnswerError | json.JSONDecodeError | ConnectionError):
        return True
    name = type(error).__name__
    return any(word in name for word in ("Connection", "Timeout", "RemoteProtocol", "ReadError"))


def check_answer(message: BaseMessage, continuing: bool = False) -> BaseMessage:
    """Refuse an answer with neither text nor tool calls (``EmptyAnswerError``), unless it is
    ``continuing`` a partial answer and the model stopped on its own: it had nothing to add,
    the answer is complete (an empty answer for any other reason is still refused, and so
    retried)."""
    if continuing and message.response_metadata.get("finish_reason") == "stop":
        return message
    if not message.text.strip() and not getattr(message, "tool_calls", None):
        raise EmptyAnswerError("the model answered with empty text")
    return message


class CallCancelled(Exception):
    """The layer stopped waiting for this call (``first_k``, layer deadline or fail-fast)."""

    def __init__(self, reason: str | None) -> None:
        self.reason = reason or "the layer stopped waiting"
        super().__init__(self.reason)


RetryHook = Callable[[int, BaseException, float], Any]

_JITTER = random.Random()
"""Draws the retry delays' jitter (one generator: seeding one per call costs a system call)."""


async def call_async(
    attempt: Callable[[], Awaitable[BaseMessage]],
    policy: CallPolicy,
    *,
    race: LayerRace | None = None,
    on_retry: RetryHook | None = None,
    can_retry: Callable[[], bool] = lambda: True,
    continuing: bool = False,
) -> BaseMessage:
    """Run ``attempt`` under ``policy`` on the running loop; a stopped ``race`` cancels it.

    ``continuing``: the call continues a partial answer, so an empty answer is accepted (the
    model has nothing to add) instead of raising ``EmptyAnswerError``.

    Raises the last error when retries are exhausted, the error is not transient or
    ``can_retry()`` says no (say, tokens were already streamed); ``CallTimeoutError`` when an
    attempt exceeds ``policy.timeout``; ``CallCancelled`` when the race stopped first.
    """
    # A task of its own, even without a race, so that a cancelled run cancels the call for
    # sure (see cancel_until_done); it starts a loop turn later, nothing next to a model call.
    task = asyncio.ensure_future(_retrying(attempt, policy, on_retry, can_retry, continuing))
    waiters: set[asyncio.Future[Any]] = {task}
    if race is not None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        race.subscribe(lambda: loop.call_soon_threadsafe(stopped.set))
        waiters.add(asyncio.ensure_future(stopped.wait()))
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters - {task}:
            waiter.cancel()
        if not task.done():
            await cancel_until_done(task)
    if task.cancelled():
        raise CallCancelled(race.reason if race is not None else None)
    return task.result()


CANCEL_RETRY_SECONDS = 0.05
"""How often :func:`cancel_until_done` repeats a cancellation the task did not act on."""


async def cancel_until_done(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it is done, cancelling again if it goes on running.

    Once is not always enough on Python 3.11: ``asyncio.wait_for`` returns the result of the
    future it waits for, and drops the cancellation, when both happen in the same loop turn
    (CPython gh-86296, fixed in 3.12). ``langchain_openai`` wraps every read of a stream in
    it (its per-chunk timeout), so a run cancelled as a chunk arrived kept streaming from the
    provider to the end: 26 of 35 aggregator streams outlived their clients in a probe. A
    second cancellation lands on the next read.
    Being cancelled meanwhile does not stop the wait (the call must end first); the
    cancellation is raised once it has.

    Example:
        >>> async def main():
        ...     task = asyncio.ensure_future(asyncio.sleep(10))
        ...     await asyncio.sleep(0)
        ...     await cancel_until_done(task)
        ...     return task.cancelled()
        >>> asyncio.run(main())
        True
    """
    cancelled = False
    while not task.done():
        task.cancel()
        try:
            await asyncio.wait({task}, timeout=CANCEL_RETRY_SECONDS)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


async def _retrying(
    attempt: Callable[[], Awaitable[BaseMessage]],
    policy: CallPolicy,
    on_retry: RetryHook | None,
    can_retry: Callable[[], bool],
    continuing: bool,
) -> BaseMessage:
    attempts = 0
    while True:
        attempts += 1
        try:
            return check_answer(await _with_deadline(attempt(), policy.timeout), continuing)
        except Exception as error:
            await asyncio.sleep(_backoff(policy, attempts, error, can_retry, on_retry))


def call_sync(
    attempt: Callable[[], BaseMessage],
    policy: CallPolicy,
    *,
    race: LayerRace | None = None,
    on_retry: RetryHook | None = None,
    can_retry: Callable[[], bool] = lambda: True,
    continuing: bool = False,
) -> BaseMessage:
    """The blocking twin of ``call_async``.

    With a deadline or a race, each attempt runs in a helper thread so the caller can stop
    waiting; ``attempt`` should then check ``cancel_requested()`` to stop its own work (the
    mixture streams such calls and stops reading at the next token).
    """
    wake = threading.Event()
    if race is not None:
        race.subscribe(wake.set)
    attempts = 0
    while True:
        attempts += 1
        try:
            return check_answer(_attempt_sync(attempt, policy.timeout, race, wake), continuing)
        except CallCancelled:
            raise
        except Exception as error:
            delay = _backoff(policy, attempts, error, can_retry, on_retry)
            _sleep_unless_stopped(delay, race, wake)


_cancel_flag: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "moa_cancel_flag", default=None
)


def cancel_requested() -> bool:
    """Inside a ``call_sync`` attempt: whether the caller stopped waiting for it."""
    flag = _cancel_flag.get()
    return flag is not None and flag.is_set()


def _attempt_sync(
    attempt: Callable[[], BaseMessage],
    timeout: float | None,
    race: LayerRace | None,
    wake: threading.Event,
) -> BaseMessage:
    if timeout is None and race is None:
        return attempt()
    outcome: dict[str, Any] = {}
    cancel = threading.Event()

    def run() -> None:
        _cancel_flag.set(cancel)
        try:
            outcome["message"] = attempt()
        except BaseException as error:  # handed to the waiting thread
            outcome["error"] = error
        finally:
            wake.set()

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), daemon=True, name="moa-call").start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not outcome:
        if race is not None and race.stopped:
            cancel.set()
            raise CallCancelled(race.reason)
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            cancel.set()
            raise CallTimeoutError(f"no answer within {timeout:g}s")
        if wake.wait(remaining):
            wake.clear()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["message"]


def _sleep_unless_stopped(delay: float, race: LayerRace | None, wake: threading.Event) -> None:
    """Back off for ``delay`` seconds, or less if the race stops meanwhile."""
    end = time.monotonic() + delay
    while True:
        if race is not None and race.stopped:
            raise CallCancelled(race.reason)
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        if wake.wait(remaining):
            wake.clear()


def _backoff(
    policy: CallPolicy,
    attempts: int,
    error: Exception,
    can_retry: Callable[[], bool],
    on_retry: RetryHook | None,
) -> float:
    """Seconds to wait before the next attempt (told to ``on_retry``); ``error`` is raised
    again when it is final (retries spent, not transient, or ``can_retry()`` says no)."""
    if attempts > policy.max_retries or not is_transient(error) or not can_retry():
        raise error
    delay = policy.delay_before(attempts, error, _JITTER)
    if on_retry is not None:
        on_retry(attempts, error, delay)
    return delay


async def _with_deadline(call: Awaitable[BaseMessage], timeout: float | None) -> BaseMessage:
    if timeout is None:
        return await call
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await call
    except TimeoutError:
        if deadline.expired():
            raise CallTimeoutError(f"no answer within {timeout:g}s") from None
        raise  # the model's own TimeoutError
