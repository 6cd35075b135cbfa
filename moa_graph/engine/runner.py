"""The one call runner: every step of a run is one body, driven under ``invoke`` or ``ainvoke``.

A step (a proposer's call, the final answer, a staircase writer's rounds) is a generator that
yields what it needs done and gets the outcome back where it yielded, a failure raised there:

- ``ModelCall``: one model call made safe (deadline per attempt, retries with backoff, the
  layer's race, the call limiter; read as a stream when it hands text on or must stop at its
  next token; drawn with its batch when its samples share one request). It answers a message.
- ``WaitFor``: wait until ``ready()``, checked whenever a staircase ``Board`` changes.

``drive_sync`` runs a step in the calling thread, ``drive_async`` on the running loop; they differ
only in how they wait, so no step is written twice. Retries and deadlines are
``moa_graph.engine.calls``.

Example:
    >>> from langchain_core.language_models import GenericFakeChatModel
    >>> from langchain_core.messages import AIMessage
    >>> from moa_graph.engine.calls import CallPolicy
    >>> from moa_graph.engine.limits import CallLimiter
    >>> model = GenericFakeChatModel(messages=iter([AIMessage("4")]))
    >>> def step():
    ...     answer = yield ModelCall(model, "2 + 2?", {}, CallPolicy())
    ...     return answer.text
    >>> drive_sync(step(), CallLimiter(None))
    '4'
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage, BaseMessageChunk, message_chunk_to_message
from langchain_core.runnables import Runnable, RunnableConfig

from moa_graph.engine.calls import (
    CallCancelled,
    CallPolicy,
    RetryHook,
    call_async,
    call_sync,
    cancel_requested,
)
from moa_graph.engine.limits import CallLimiter
from moa_graph.engine.race import LayerRace
from moa_graph.engine.sample_batch import Draw, drawn_answers
from moa_graph.engine.staircase import Board

T = TypeVar("T")


@dataclass
class ModelCall:
    """One model call a step needs, and the rules it is made under (see the module docstring)."""

    runnable: Runnable[Any, BaseMessage]
    input: Any
    config: RunnableConfig
    policy: CallPolicy
    race: LayerRace | None = None
    """The layer's race: the call is cut off once the layer stops waiting."""
    on_retry: RetryHook | None = None
    can_retry: Callable[[], bool] = lambda: True
    continuing: bool = False
    """It continues a partial answer: an empty answer means the model had nothing to add."""
    streamed: bool = False
    """Read as a stream, each piece of text handed to ``on_text``, stopping at the next token
    once ``stopped()`` gives a reason."""
    on_text: Callable[[str], object] = lambda text: None
    """Takes each piece of a streamed answer (by default nobody reads it as it arrives: the
    answer's tokens reach the user through callbacks)."""
    stopped: Callable[[], str | None] = lambda: None
    draw: Draw | None = None
    attempts: int = 0
    """Attempts made so far (counted by the runner)."""


@dataclass(frozen=True)
class WaitFor:
    """Wait until ``ready()``, checked after every change of ``board``."""

    board: Board
    ready: Callable[[], bool]


Steps = Generator["ModelCall | WaitFor", Any, T]
"""A step's body: yields what it needs done, returns its outcome."""


def drive_sync(steps: Steps[T], limiter: CallLimiter) -> T:
    """Run ``steps`` in the calling thread (under ``invoke``)."""
    done, value = _advance(steps)
    while not done:
        try:
            reply: Any = None
            if isinstance(value, WaitFor):
                value.board.wait(value.ready)
            else:
                reply = call_sync(partial(_attempt_sync, value, limiter), value.policy,
                                  **_rules(value))  # fmt: skip
        except BaseException as failure:  # raised in the step, where it yielded
            done, value = _advance(steps, error=failure)
        else:
            done, value = _advance(steps, reply)
    return value


async def drive_async(steps: Steps[T], limiter: CallLimiter) -> T:
    """Run ``steps`` on the running loop (under ``ainvoke``)."""
    done, value = _advance(steps)
    while not done:
        try:
            reply: Any = None
            if isinstance(value, WaitFor):
                await value.board.await_ready(value.ready)
            else:
                reply = await call_async(partial(_attempt_async, value, limiter), value.policy,
                                         **_rules(value))  # fmt: skip
        except BaseException as failure:  # raised in the step, where it yielded
            done, value = _advance(steps, error=failure)
        else:
            done, value = _advance(steps, reply)
    return value


def _advance(
    steps: Steps[Any], reply: Any = None, *, error: BaseException | None = None
) -> tuple[bool, Any]:
    """Hand ``steps`` a reply (or raise ``error`` where they yielded): ``(True, outcome)`` once
    they return, else ``(False, what they need next)``."""
    try:
        return False, steps.send(reply) if error is None else steps.throw(error)
    except StopIteration as finished:
        return True, finished.value


def _rules(call: ModelCall) -> dict[str, Any]:
    """The rules ``calls.call_sync`` and ``calls.call_async`` make ``call`` under."""
    return {"race": call.race, "on_retry": call.on_retry, "can_retry": call.can_retry,
            "continuing": call.continuing}  # fmt: skip


def _attempt_sync(call: ModelCall, limiter: CallLimiter) -> BaseMessage:
    call.attempts += 1
    if call.draw is not None:
        draw = call.draw
        return draw.batch.answer_sync(draw.index, call.attempts, partial(_draw_sync, draw, limiter))
    with limiter.sync_slot():
        # a call the layer may stop waiting for is streamed too: it stops at its next token
        if not call.streamed and call.race is None:
            return call.runnable.invoke(call.input, call.config)
        merged = _Merged(call)
        chunks: Iterator[BaseMessageChunk] = call.runnable.stream(call.input, call.config)  # type: ignore[assignment]
        try:
            for chunk in chunks:
                merged.add(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # closes the HTTP response at once, not when the generator is collected
        return merged.message()


async def _attempt_async(call: ModelCall, limiter: CallLimiter) -> BaseMessage:
    call.attempts += 1
    if call.draw is not None:
        draw = call.draw
        request = partial(_draw_async, draw, limiter)
        return await draw.batch.answer_async(draw.index, call.attempts, request)
    async with limiter.async_slot():
        if not call.streamed:  # a call the layer stops waiting for is cancelled
            return await call.runnable.ainvoke(call.input, call.config)
        merged = _Merged(call)
        chunks: AsyncIterator[BaseMessageChunk] = call.runnable.astream(call.input, call.config)  # type: ignore[assignment]
        try:
            async for chunk in chunks:
                merged.add(chunk)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return merged.message()


def _draw_sync(draw: Draw, limiter: CallLimiter) -> list[BaseMessage]:
    chat, kwargs, traced = draw.request()
    with limiter.sync_slot():
        return drawn_answers(chat.generate([draw.messages], **traced, **kwargs))


async def _draw_async(draw: Draw, limiter: CallLimiter) -> list[BaseMessage]:
    chat, kwargs, traced = draw.request()
    async with limiter.async_slot():
        return drawn_answers(await chat.agenerate([draw.messages], **traced, **kwargs))


class _Merged:
    """A streamed answer merged as it arrives, each piece of text handed on; stops (raising
    ``CallCancelled``) once the call's ``stopped()`` gives a reason or its caller gave up."""

    def __init__(self, call: ModelCall) -> None:
        self.call = call
        self.merged: BaseMessageChunk | None = None

    def add(self, chunk: BaseMessageChunk) -> None:
        reason = self.call.stopped() or (
            "the layer stopped waiting" if cancel_requested() else None
        )
        if reason:
            raise CallCancelled(reason)
        self.merged = chunk if self.merged is None else self.merged + chunk
        self.call.on_text(chunk.text)

    def message(self) -> BaseMessage:
        if self.merged is None:
            raise RuntimeError("the model streamed nothing")
        return message_chunk_to_message(self.merged)
