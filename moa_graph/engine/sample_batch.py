"""Samples of one model drawn in one request (``n``) and shared out to their proposer calls.

A model sampled k times in a layer is k proposer calls (each its own proposal, trace entry and
saved task). When the model draws several answers in one request (``samples_in_one_request``:
the embedded models, or an OpenAI-compatible server that honours ``n``), the calls that are sent
together meet in a ``SampleBatch``: the first to arrive makes the one request for all of them
(its prompt read once) and each takes its own answer. The request carries the seed of its first
sample: the embedded models give answer j the draw of ``seed + j``, so each sample keeps the
seed it has when drawn apart; an OpenAI-compatible server draws the other answers its own way.

The calls of one batch wait for each other, so a batch ends as one: a cut-off (``first_k``, a
layer deadline) that stops waiting for one sample stops waiting for the others too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig

from moa_graph.engine.plan import ProposerSlot
from moa_graph.engine.token_streaming import without_token_streaming
from moa_graph.models import unbound


def sample_batches(slots: Sequence[ProposerSlot]) -> dict[int, list[int]]:
    """Which calls one request draws together: for each slot's index, the indices of its batch
    (consecutive samples of one model that draws samples in one request, up to its
    ``samples_per_request``; else itself alone).

    Example:
        >>> from moa_graph.engine.plan import ProposerSlot
        >>> def slot(index, sample, batched=True, most=None):
        ...     return ProposerSlot(layer=1, index=index, name="m", spec_name="m", model_name="m",
        ...                         model=None, system_prompt=None, policy=None, sample=sample,
        ...                         samples_in_one_request=batched, samples_per_request=most)
        >>> sample_batches([slot(0, 0), slot(1, 1), slot(3, 3), slot(4, 0, False)])
        {0: [0, 1], 1: [0, 1], 3: [3], 4: [4]}
        >>> sample_batches([slot(k, k, most=2) for k in range(3)])
        {0: [0, 1], 1: [0, 1], 2: [2]}
    """
    batches: dict[int, list[int]] = {}
    current: list[int] = []
    previous: ProposerSlot | None = None
    for slot in slots:
        follows = (
            previous is not None
            and slot.samples_in_one_request
            and slot.first_sample_index == previous.first_sample_index
            and slot.sample == previous.sample + 1
            and (slot.samples_per_request is None or len(current) < slot.samples_per_request)
        )
        current = [*current, slot.index] if follows else [slot.index]
        for index in current:
            batches[index] = current
        previous = slot
    return batches


class SampleBatch:
    """One request's answers, for the calls of its batch; one attempt at a time."""

    def __init__(self, members: Sequence[int]) -> None:
        self.members = tuple(members)
        self._attempts: dict[int, Future[list[BaseMessage]]] = {}
        self._lock = threading.Lock()

    def _attempt(self, number: int) -> tuple[Future[list[BaseMessage]], bool]:
        """The future of attempt ``number`` and whether this caller makes its request (also
        when the call that made it gave it up, cancelled at its own deadline)."""
        with self._lock:
            if number in self._attempts and not self._attempts[number].cancelled():
                return self._attempts[number], False
            future: Future[list[BaseMessage]] = Future()
            self._attempts[number] = future
            return future, True

    def answer_sync(
        self, index: int, attempt: int, request: Callable[[], list[BaseMessage]]
    ) -> BaseMessage:
        """Call ``index``'s answer of attempt ``attempt`` (the first caller makes ``request``)."""
        future, leads = self._attempt(attempt)
        if not leads:
            return future.result()[self.members.index(index)]
        try:
            answers = self._checked(request())
        except BaseException as error:
            _settle(future, error=error)
            raise
        _settle(future, answers)
        return answers[self.members.index(index)]

    async def answer_async(
        self, index: int, attempt: int, request: Callable[[], Awaitable[list[BaseMessage]]]
    ) -> BaseMessage:
        """The async twin of ``answer_sync``."""
        future, leads = self._attempt(attempt)
        while not leads:  # shielded: a caller giving up must not cancel the others' answers
            shared = asyncio.wrap_future(future)
            shared.add_done_callback(_retrieved)
            try:
                answers = await asyncio.shield(shared)
            except asyncio.CancelledError:
                if not future.cancelled() or _being_cancelled():
                    raise
                # the call that made the request was cut off at its deadline, this one was not:
                # it asks again (a run that is cancelled cancels every call, this one too)
                future, leads = self._attempt(attempt)
                continue
            return answers[self.members.index(index)]
        try:
            answers = self._checked(await request())
        except BaseException as error:
            _settle(future, error=error)
            raise
        _settle(future, answers)
        return answers[self.members.index(index)]

    def _checked(self, answers: list[BaseMessage]) -> list[BaseMessage]:
        if len(answers) != len(self.members):
            raise RuntimeError(
                f"asked for {len(self.members)} answers in one request (n), got {len(answers)}: "
                "the server ignores n; set ProposerSpec(samples_in_one_request=False)"
            )
        return counted_once(answers)


def _settle(
    future: Future[list[BaseMessage]],
    answers: list[BaseMessage] | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    """Hand the request's outcome to the calls waiting for it (unless they all gave up)."""
    if isinstance(error, asyncio.CancelledError):
        future.cancel()  # the request was given up: so are the answers waiting for it
        return
    with contextlib.suppress(InvalidStateError):  # settled already
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(answers or [])


def _being_cancelled() -> bool:
    """Whether the running task itself was asked to stop."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _retrieved(shared: asyncio.Future[Any]) -> None:
    """Mark a shared outcome as seen, whether or not a waiting call is still there to see it."""
    if not shared.cancelled():
        shared.exception()


def counted_once(answers: list[BaseMessage]) -> list[BaseMessage]:
    """The answers with the request's usage counted once: a provider that reports the same
    usage on every answer (the whole request's, as OpenAI does) keeps it on the first only."""
    usages = [getattr(answer, "usage_metadata", None) for answer in answers]
    if len(answers) < 2 or usages[0] is None or any(u != usages[0] for u in usages[1:]):
        return answers
    return [answers[0], *(a.model_copy(update={"usage_metadata": None}) for a in answers[1:])]


@dataclass(frozen=True)
class Draw:
    """A call's share of one request that draws the samples of its batch together."""

    batch: SampleBatch
    index: int
    model: Runnable[Any, BaseMessage]
    messages: list[BaseMessage]
    seed: int | None
    config: RunnableConfig

    def request(self) -> tuple[BaseChatModel, dict[str, Any], dict[str, Any]]:
        """The chat model under the bindings, the batch's request arguments (``n`` answers, the
        first drawn with ``seed``) and the traced config as ``generate`` takes them.

        Never streamed: LangChain merges a streamed request's chunks into one answer, whatever
        their choice (so no ``streaming=True``, nor LangGraph's ``messages`` handler).

        Raises:
            TypeError: when something other than bindings wraps the chat model.
        """
        chat, kwargs = unbound(self.model)
        if not isinstance(chat, BaseChatModel):
            raise TypeError(
                f"{type(chat).__name__} is not a chat model: its samples are drawn apart"
            )
        if getattr(chat, "streaming", None) is True:  # a model built to stream every call
            chat = chat.model_copy(update={"streaming": False})
        seed = {} if self.seed is None else {"seed": self.seed}
        config = self.config
        traced = {"callbacks": without_token_streaming(config.get("callbacks")),
                  "tags": config.get("tags"), "metadata": config.get("metadata"),
                  "run_name": config.get("run_name")}  # fmt: skip
        return chat, {**kwargs, "n": len(self.batch.members), **seed}, traced


def drawn_answers(result: LLMResult) -> list[BaseMessage]:
    """The answers of a request for several."""
    return [generation.message for generation in result.generations[0]
            if isinstance(generation, ChatGeneration)]  # fmt: skip
