"""A scripted fake chat model that records what it receives (sync, async and streaming)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field, PrivateAttr

Reply = str | Callable[[list[BaseMessage]], str]


class ScriptedChatModel(BaseChatModel):
    """Answers with ``reply`` after ``delay`` seconds, or raises ``error``; records every call.

    ``usage`` is reported as whitespace-split word counts of the prompt and of the answer.
    ``max_active`` is the largest number of calls that were in flight at the same time.
    """

    reply: Reply = "ok"
    delay: float = 0.0
    error: Exception | None = None
    model_name: str = "fake-model"
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    call_kwargs: list[dict[str, Any]] = Field(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _active: int = PrivateAttr(default=0)
    max_active: int = 0

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def _answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        self.calls.append(list(messages))
        self.call_kwargs.append(dict(kwargs))
        if self.error is not None:
            raise self.error
        text = self.reply(messages) if callable(self.reply) else self.reply
        stop = kwargs.get("stop")
        for word in stop or []:
            text = text.split(word)[0]
        return text

    def _usage(self, messages: list[BaseMessage], text: str) -> dict[str, int]:
        prompt = sum(len(m.text.split()) for m in messages)
        output = len(text.split())
        return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}

    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _message(self, messages: list[BaseMessage], text: str) -> AIMessage:
        return AIMessage(
            text,
            usage_metadata=self._usage(messages, text),  # type: ignore[arg-type]
            response_metadata={"model_name": self.model_name},
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._enter()
        try:
            time.sleep(self.delay)
            text = self._answer(messages, {"stop": stop, **kwargs})
        finally:
            self._leave()
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, text))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._enter()
        try:
            await asyncio.sleep(self.delay)
            text = self._answer(messages, {"stop": stop, **kwargs})
        finally:
            self._leave()
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, text))])

    def _chunks(self, messages: list[BaseMessage], text: str) -> Iterator[ChatGenerationChunk]:
        words = text.split(" ")
        for i, word in enumerate(words):
            yield ChatGenerationChunk(message=AIMessageChunk(word if i == 0 else " " + word))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                "",
                usage_metadata=self._usage(messages, text),  # type: ignore[arg-type]
                response_metadata={"model_name": self.model_name},
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        self._enter()
        try:
            time.sleep(self.delay)
            text = self._answer(messages, {"stop": stop, **kwargs})
        finally:
            self._leave()
        yield from self._chunks(messages, text)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        self._enter()
        try:
            await asyncio.sleep(self.delay)
            text = self._answer(messages, {"stop": stop, **kwargs})
        finally:
            self._leave()
        for chunk in self._chunks(messages, text):
            yield chunk


def mixture_of(graph: Any) -> Any:
    """The ``Mixture`` behind a graph of ``create_moa_graph`` (built or compiled), for tests
    that look at what its runs share."""
    nodes = graph.nodes
    node = nodes["propose"]
    runnable = getattr(node, "bound", None) or node.runnable
    return runnable.func.__self__.mixture
