"""A chat model call kept on a thread (``with_checkpointer`` + ``moa_thread``): a retry of a run
that stopped mid-layer finishes it without calling a finished proposer again, a retry of a
finished run answers without any call, and a thread is never given another conversation.

The loopback server counts every call; layer 2's last proposer hangs until the caller gives up.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from pydantic import SecretStr

from moa_graph import ChatMixtureOfAgents, ProposerSpec, ThreadInUseError
from moa_graph.testing import ModelScript, OpenAICompatibleServer
from tests.test_durable import (
    AGGREGATOR,
    DEEP,
    FINAL,
    LATE,
    WAIT_S,
    call_counts,
    hanging_call_in_flight,
    saved_proposals,
    scripts_for,
)

QUESTION = "What is the capital of France?"


def mixture(server: OpenAICompatibleServer) -> ChatMixtureOfAgents:
    def spec(model: str) -> ProposerSpec:
        key = SecretStr("sk-test-placeholder")
        return ProposerSpec(model=f"openai:{model}", base_url=server.base_url, api_key=key)

    proposers = [[spec(m) for m in layer] for layer in DEEP.proposers]
    return ChatMixtureOfAgents(
        proposers=proposers, aggregator=spec(AGGREGATOR), max_retries=0, timeout=30.0
    )


async def answer(moa: ChatMixtureOfAgents, mode: str, **kwargs: Any) -> AIMessage:
    """The answer of one call made as ``mode`` (the sync ones on a worker thread)."""
    if mode == "ainvoke":
        return await moa.ainvoke(QUESTION, **kwargs)
    if mode == "invoke":
        return await asyncio.to_thread(moa.invoke, QUESTION, **kwargs)
    if mode == "astream":
        chunks = [chunk async for chunk in moa.astream(QUESTION, **kwargs)]
    else:
        chunks = await asyncio.to_thread(lambda: list(moa.stream(QUESTION, **kwargs)))
    total: BaseMessage = AIMessageChunk(content="")
    for chunk in chunks:
        total = total + chunk
    return AIMessage(
        content=total.content,
        usage_metadata=getattr(total, "usage_metadata", None),
        response_metadata=total.response_metadata,
    )


@pytest.mark.parametrize("mode", ["ainvoke", "invoke", "astream", "stream"])
def test_a_retry_finishes_the_stopped_run_without_paying_finished_proposers(mode: str) -> None:
    with OpenAICompatibleServer(scripts_for(DEEP)) as server:
        saver = InMemorySaver()
        moa = mixture(server).with_checkpointer(saver)

        async def give_up_then_retry() -> tuple[dict[str, int], AIMessage]:
            first = asyncio.ensure_future(answer(moa, "astream", moa_thread="request-1"))
            deadline = time.monotonic() + WAIT_S
            config: Any = {"configurable": {"thread_id": "request-1"}}
            while not (  # the call hangs in layer 2, the other answers saved
                hanging_call_in_flight(server, DEEP)
                and saved_proposals(saver, config) == sorted(DEEP.finished_in_hanging_layer)
            ):
                assert time.monotonic() < deadline and not first.done(), "layer 2 never hung"
                await asyncio.sleep(0.02)
            first.cancel()  # the client went away mid-layer 2
            with pytest.raises(asyncio.CancelledError):
                await first
            before = call_counts(server.requests())
            server.set_script(DEEP.hanging, ModelScript(reply=LATE))
            return before, await answer(moa, mode, moa_thread="request-1")

        before, retried = asyncio.run(give_up_then_retry())

    assert before == dict.fromkeys(DEEP.models, 1)
    # every proposer once, the hung one again, the aggregator once: nothing answered re-paid
    assert call_counts(server.requests()) == {**before, DEEP.hanging: 2, AGGREGATOR: 1}
    assert retried.content == FINAL
    proposals = retried.response_metadata["proposals"]
    assert sorted(p["model"] for p in proposals) == sorted(DEEP.models)  # layer 1's included
    assert {p["text"] for p in proposals if p["model"] == DEEP.hanging} == {LATE}
    assert retried.usage_metadata and retried.usage_metadata["total_tokens"] > 0


@pytest.mark.parametrize("mode", ["ainvoke", "invoke", "astream", "stream"])
def test_a_retry_of_a_finished_run_answers_again_without_any_call(mode: str) -> None:
    scripts = {model: ModelScript(reply=f"Answer of {model}.") for model in DEEP.models}
    scripts[AGGREGATOR] = ModelScript(reply=FINAL)
    with OpenAICompatibleServer(scripts) as server:
        moa = mixture(server).with_checkpointer(InMemorySaver())
        first = asyncio.run(answer(moa, "ainvoke", moa_thread="request-1"))
        calls = len(server.requests())
        again = asyncio.run(answer(moa, mode, moa_thread="request-1"))
        assert len(server.requests()) == calls
    assert again.content == first.content == FINAL
    assert again.usage_metadata == first.usage_metadata
    assert again.response_metadata["proposals"] == first.response_metadata["proposals"]


def fakes(*replies: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter(replies))


@pytest.mark.parametrize(
    ("conversation", "options"),
    [
        ([("system", "Be brief."), ("user", "And of Italy?")], {}),
        ([("system", "Be brief.")], {}),  # the start of the kept conversation: not its run
        ([("system", "Be brief."), ("user", QUESTION)], {"stop": ["###"]}),
    ],
    ids=["another-question", "a-prefix", "another-stop"],
)
def test_a_thread_answers_only_its_own_request(
    conversation: list[tuple[str, str]], options: dict[str, Any]
) -> None:
    model = fakes("Paris.", "Paris, surely.")
    moa = ChatMixtureOfAgents(proposers=[model], aggregator=model, layers=2)
    kept = moa.with_checkpointer(InMemorySaver())
    kept.invoke([("system", "Be brief."), ("user", QUESTION)], moa_thread="request-1")
    with pytest.raises(ThreadInUseError, match="thread 'request-1' holds the run of another"):
        kept.invoke(conversation, moa_thread="request-1", **options)


def test_a_thread_needs_a_checkpointer() -> None:
    model = fakes("unused")
    moa = ChatMixtureOfAgents(proposers=[model], aggregator=model, layers=2)
    with pytest.raises(ValueError, match=r"keeps no threads.*with_checkpointer"):
        moa.invoke(QUESTION, moa_thread="request-1")
    assert moa.with_checkpointer(InMemorySaver())._kept is not None
    assert moa._kept is None  # the original mixture keeps nothing


def test_a_retry_is_recognised_whatever_its_messages_carry_besides_what_they_say() -> None:
    """A caller's own store may drop ids and metadata, or add them: the request is the same."""
    model = fakes("Paris.", "Paris, surely.")
    moa = ChatMixtureOfAgents(proposers=[model], aggregator=model, layers=2)
    kept = moa.with_checkpointer(InMemorySaver())
    first = kept.invoke([HumanMessage(QUESTION, id="a1")], moa_thread="request-1")
    again = kept.invoke(
        [HumanMessage(QUESTION, id="b2", response_metadata={"from": "my-store"})],
        moa_thread="request-1",
    )
    assert again.content == first.content == "Paris, surely."
